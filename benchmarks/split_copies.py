"""How far the copies of a split-widened DRCN have moved apart: whether the wide model uses its width.

    python benchmarks/split_copies.py state/drcn.safetensors [more.safetensors ...] [--source-features 64]

`widen(..., "split")` makes channel ``c`` a copy of channel ``c % F`` (F, the narrow model's width): the same
incoming weights plus noise of 1% of the layer's weight std, and a share of the outgoing weights. Under Adam
the copies' updates are equal (their gradients differ by a positive factor, which Adam's normalisation
removes), so only that noise tells them apart; ``signed`` widening gives some copies a negative share, which
Adam moves the other way. Per conv layer this prints, over the copies (channels F and up), the mean and the
largest relative distance of a copy's incoming kernel (``weight[c]``, what the channel computes) from its
source channel's. About 0.01: the copies are still copies, and the model computes no more than its F-channel
source. Meaningless for a model widened ``fresh`` or trained from scratch.
"""

from __future__ import annotations

import argparse

import torch

from drcn_cli.weights.files import load_weights

WRITERS = ("embed1", "embed2", "recursive", "recon1")  # convs whose output channels were copied


def copy_distances(weight: torch.Tensor, source_features: int) -> torch.Tensor:
    """Relative distance ||w_c - w_(c % F)|| / ||w_(c % F)|| of each output channel c >= F of a conv kernel
    (out, in, kh, kw). Returns a 1-D float tensor, one value per copy."""
    rows = weight.detach().float().flatten(1)
    copies = torch.arange(source_features, rows.shape[0])
    sources = rows[copies % source_features]
    return (rows[copies] - sources).norm(dim=1) / sources.norm(dim=1).clamp_min(1e-12)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("paths", nargs="+")
    parser.add_argument("--source-features", type=int, default=64, help="width of the model it was widened from")
    args = parser.parse_args()
    f = args.source_features
    for path in args.paths:
        model, metadata = load_weights(path)
        steps = metadata.get("training_steps_total") or metadata.get("training_steps", "?")
        print(f"{path} (F={model.config.features} from {f}, {steps} steps)")
        if model.config.features <= f:
            print(f"  no copies: F={model.config.features} is not wider than {f}")
            continue
        print(f"  {'layer':<10} {'copy distance mean / max':>25}")
        for name in WRITERS:
            d = copy_distances(getattr(model, name).weight, f)
            print(f"  {name:<10} {d.mean().item():>16.4f} / {d.max().item():.4f}")


if __name__ == "__main__":
    main()
