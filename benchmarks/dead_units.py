"""How much of a trained DRCN is dead: kernel weights and whole channels whose weights have decayed to ~zero.

    python benchmarks/dead_units.py weights/drcn-lite.safetensors [more.safetensors ...] [--below 1e-10]

Per conv layer: the share of kernel weights below the threshold in magnitude, the output channels whose whole
kernel is (no signal leaves them) and the input channels whose whole slice is (no signal is read from them).
A ReLU channel that never fires gets no gradient; under L2 weight decay its weights then shrink towards zero,
which is what this counts.
"""

from __future__ import annotations

import argparse

from drcn_cli.weights.files import load_weights

LAYERS = ("embed1", "embed2", "recursive", "recon1", "recon2")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("paths", nargs="+")
    parser.add_argument("--below", type=float, default=1e-10, help="a weight below this magnitude counts as dead")
    args = parser.parse_args()
    for path in args.paths:
        model, metadata = load_weights(path)
        steps = metadata.get("training_steps_total") or metadata.get("training_steps", "?")
        print(f"{path} (F={model.config.features}, D={model.config.recursions}, {steps} steps)")
        print(f"  {'layer':<10} {'weights dead':>13} {'dead out ch':>12} {'dead in ch':>11}")
        for name in LAYERS:
            weight = getattr(model, name).weight.detach()
            dead = weight.abs() < args.below
            out_dead = int(dead.flatten(1).all(dim=1).sum())
            in_dead = int(dead.transpose(0, 1).flatten(1).all(dim=1).sum())
            print(f"  {name:<10} {dead.float().mean().item():>12.1%} {out_dead:>6} / {weight.shape[0]:<4} "
                  f"{in_dead:>5} / {weight.shape[1]}")


if __name__ == "__main__":
    main()
