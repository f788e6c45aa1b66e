"""How far the copies of a split-widened DRCN have moved apart: whether the wide model uses its width.

    python benchmarks/split_copies.py state/drcn.safetensors [more.safetensors ...] [--source-features 64]

`widen(..., "split")` makes channel ``c`` a copy of channel ``c % F`` (F, the narrow model's width): the same
incoming weights plus noise of 1% of the layer's weight std, and an equal share of the outgoing weights. Under
Adam the copies' updates are equal (their gradients differ by a positive factor, which Adam's normalisation
removes), so only that noise tells them apart. Per conv layer this prints, over the copies (channels F and up),
the mean and the largest relative distance of a copy's kernel from its source channel's, for the weights a
channel writes with (incoming, ``weight[c]``) and those it is read with (outgoing, ``weight[:, c]``, the
columns of the next conv, which hold the copies' noisy rows too). About 0.01 in every cell (recon2's about 0):
the copies are still copies, and the model computes no more than its F-channel source. Meaningless for a model
widened ``fresh`` or trained from scratch.
"""

from __future__ import annotations

import argparse

import torch

from drcn_cli.weights import load_weights

WRITERS = ("embed1", "embed2", "recursive", "recon1")  # convs whose output channels were copied
READERS = ("embed2", "recursive", "recon1", "recon2")  # convs whose input channels were shared among copies


def copy_distances(weight: torch.Tensor, source_features: int, dim: int) -> torch.Tensor:
    """Relative distance ||w_c - w_(c % F)|| / ||w_(c % F)|| of each copy c >= F along ``dim`` of a conv
    kernel (0: output channels, 1: input channels). Returns a 1-D float tensor, one value per copy."""
    slices = weight.detach().float().movedim(dim, 0).flatten(1)
    copies = torch.arange(source_features, slices.shape[0])
    sources = slices[copies % source_features]
    return (slices[copies] - sources).norm(dim=1) / sources.norm(dim=1).clamp_min(1e-12)


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
        print(f"  {'layer':<10} {'incoming mean / max':>20} {'outgoing mean / max':>20}")
        for name in sorted(set(WRITERS) | set(READERS), key=(WRITERS + ("recon2",)).index):
            weight = getattr(model, name).weight
            cells = []
            for dim, layers in ((0, WRITERS), (1, READERS)):
                if name in layers:
                    d = copy_distances(weight, f, dim)
                    cells.append(f"{d.mean().item():.4f} / {d.max().item():.4f}")
                else:
                    cells.append("-")
            print(f"  {name:<10} {cells[0]:>20} {cells[1]:>20}")


if __name__ == "__main__":
    main()
