"""Write a realistic image-folder data set: ``OUT/train/<class>/*.jpg`` and ``OUT/test/<class>/*.jpg``.

No data set can be downloaded here, so this makes one laid out the way people keep CIFAR-10 or
ImageNet-style folders (one folder per split, one subfolder per class, JPEG files), with a task that is
harder than the bundled digits: each image is a handwritten digit from scikit-learn's digits (the train
and test splits draw their glyphs from disjoint halves of the 1,797 originals) drawn at a random scale,
rotation and position, in a random colour, over a random low-frequency coloured background, with
distractor strokes, pixel noise and JPEG compression. Seeded: the same arguments give the same files.

    python benchmarks/make_image_folder.py OUT --train 50000 --test 10000 --size 32
"""

from __future__ import annotations

import argparse
import os
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

CLASSES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


def _glyph_pools():
    from sklearn.datasets import load_digits

    d = load_digits()
    rng = np.random.default_rng(1234)
    order = rng.permutation(len(d.target))
    half = len(order) // 2
    pools = {}
    for split, idx in (("train", order[:half]), ("test", order[half:])):
        pools[split] = {c: d.images[idx][d.target[idx] == c] / 16.0 for c in range(10)}
    return pools


def _background(rng, size):
    grid = rng.uniform(0, 1, (3, 3, 3)).astype(np.float32)
    img = Image.fromarray((grid * 255).astype(np.uint8), "RGB").resize((size, size), Image.BICUBIC)
    return np.asarray(img, dtype=np.float32) / 255.0


def _one(args):
    split, label, index, size, seed, out = args
    rng = np.random.default_rng((seed, 0 if split == "train" else 1, label, index))
    pool = POOLS[split][label]
    glyph = pool[rng.integers(len(pool))]
    bg = _background(rng, size)
    scale = rng.uniform(0.45, 0.85)
    g = int(round(size * scale))
    mask = Image.fromarray((glyph * 255).astype(np.uint8), "L").resize((g, g), Image.BICUBIC)
    mask = mask.rotate(rng.uniform(-25, 25), resample=Image.BILINEAR, expand=False)
    canvas = Image.new("L", (size, size), 0)
    x0, y0 = rng.integers(0, size - g + 1, 2)
    canvas.paste(mask, (int(x0), int(y0)))
    draw = ImageDraw.Draw(canvas)
    for _ in range(rng.integers(0, 3)):  # distractor strokes, drawn in the glyph's colour
        pts = [tuple(int(v) for v in rng.integers(0, size, 2)) for _ in range(2)]
        draw.line(pts, fill=int(rng.integers(90, 200)), width=max(1, size // 24))
    alpha = np.asarray(canvas, dtype=np.float32)[..., None] / 255.0
    colour = rng.uniform(0, 1, 3).astype(np.float32)
    if abs(colour.mean() - bg.mean()) < 0.25:  # keep the glyph visible against its background
        colour = 1.0 - colour if bg.mean() > 0.5 else np.clip(colour + 0.5, 0, 1)
    img = bg * (1 - alpha) + colour * alpha
    img += rng.normal(0, 0.04, img.shape).astype(np.float32)
    arr = (np.clip(img, 0, 1) * 255).astype(np.uint8)
    path = out / split / CLASSES[label] / f"{index:06d}.jpg"
    Image.fromarray(arr, "RGB").save(path, quality=int(rng.integers(80, 96)))


POOLS = _glyph_pools()


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--train", type=int, default=50000, help="training images (split evenly over 10 classes)")
    ap.add_argument("--test", type=int, default=10000, help="test images")
    ap.add_argument("--size", type=int, default=32, help="image side in pixels")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    a = ap.parse_args(argv)
    jobs = []
    for split, n in (("train", a.train), ("test", a.test)):
        for c in CLASSES:
            (a.out / split / c).mkdir(parents=True, exist_ok=True)
        jobs += [(split, i % 10, i, a.size, a.seed, a.out) for i in range(n)]
    t = time.perf_counter()
    with ProcessPoolExecutor(a.workers) as ex:
        for _ in ex.map(_one, jobs, chunksize=256):
            pass
    print(f"wrote {len(jobs)} images ({a.train} train / {a.test} test, {a.size}px) to {a.out} "
          f"in {time.perf_counter() - t:.1f} s")


if __name__ == "__main__":
    main()
