"""Benchmark: peak memory of `tfship build` and `tfship train` on an image folder, small vs 16x.

Run by hand (`python bench/image_memory.py`); writes bench/results/image_memory.json and the
image_memory section of BENCHMARKS.md. Two image folders (one sub-folder per class, 64x64
RGB PNGs from one seeded generator: a class colour and stripe plus noise) are written to a
temporary folder under /tmp, then `tfship build --data FOLDER` and `tfship train --epochs 1`
each run as their own process; the figure for a stage is that process's peak RSS
(``ru_maxrss`` from ``wait4``). Goal, as for tables (#17): memory independent of the data's
size, a growth from the small folder to the large one under 200 MB for each stage.

What it shows: images are decoded one at a time to disk and read back a batch at a time
(``tfship.rows``); before, a folder was decoded into memory whole (and bounded by
``--max-data-bytes``), so the peak grew with the decoded pixels (listed per size).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import save  # noqa: E402
from table_memory import MIB, TFSHIP, peak, tensorflow_floor  # noqa: E402

SIDE = 64
CLASSES = ("red", "green", "blue", "grey")
GOAL_GROWTH_MB = 200


def write_folder(root: Path, images: int, seed: int = 0) -> int:
    """``images`` PNGs in one sub-folder per class; returns the bytes written."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    colours = np.array([[200, 40, 40], [40, 200, 40], [40, 40, 200], [120, 120, 120]])
    for name in CLASSES:
        (root / name).mkdir(parents=True)
    for i in range(images):
        cls = i % len(CLASSES)
        base = np.broadcast_to(colours[cls], (SIDE, SIDE, 3)).astype(np.float32)
        stripe = (np.arange(SIDE) // (4 + 2 * cls)) % 2
        img = base * (0.7 + 0.3 * stripe[None, :, None]) + rng.normal(0, 40, (SIDE, SIDE, 3))
        Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(
            root / CLASSES[cls] / f"{i:06d}.png"
        )
    return sum(p.stat().st_size for p in root.rglob("*.png"))


def measure(images: int, batch_size: int, tmp: Path) -> dict:
    folder = tmp / f"{images}"
    t = time.perf_counter()
    nbytes = write_folder(folder / "photos", images)
    decoded = images * SIDE * SIDE * 3 * 4 / MIB  # float32 pixels, what build/train handle
    print(
        f"{images} images: {nbytes / MIB:.0f} MiB of PNG ({decoded:.0f} MiB decoded) in "
        f"{time.perf_counter() - t:.0f} s",
        flush=True,
    )
    ws = ["--workspace", str(folder / "ws")]
    build = [str(TFSHIP), "build", *ws, "--data", str(folder / "photos")]
    build_mib, build_s, _ = peak(build, folder, folder / "build.log")
    print(f"  build: peak {build_mib:.0f} MiB, {build_s:.0f} s", flush=True)
    train = [str(TFSHIP), "train", *ws, "--epochs", "1", "--batch-size", str(batch_size)]
    train_mib, train_s, _ = peak(train, folder, folder / "train.log")
    print(f"  train: peak {train_mib:.0f} MiB, {train_s:.0f} s", flush=True)
    return {
        "images": images,
        "png_mib": round(nbytes / MIB, 1),
        "decoded_mib": round(decoded, 1),
        "build_peak_mib": round(build_mib, 1),
        "build_s": round(build_s, 1),
        "train_peak_mib": round(train_mib, 1),
        "train_s": round(train_s, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", default="1000,16000", help="images, small,large")
    parser.add_argument("--batch-size", type=int, default=64, help="tfship train --batch-size")
    parser.add_argument("--no-save", action="store_true", help="print only (for a trial run)")
    args = parser.parse_args()
    small, large = (int(s) for s in args.sizes.split(","))
    with tempfile.TemporaryDirectory(prefix="tfship-bench-img-", dir="/tmp") as tmp:
        floor_mib = tensorflow_floor(Path(tmp))
        runs = [measure(n, args.batch_size, Path(tmp)) for n in (small, large)]
    a, b = runs
    growth = {
        stage: round((b[f"{stage}_peak_mib"] - a[f"{stage}_peak_mib"]) * MIB / 1e6, 1)
        for stage in ("build", "train")
    }
    met = all(g < GOAL_GROWTH_MB for g in growth.values())
    figures = {
        "side": SIDE,
        "batch_size": args.batch_size,
        "runs": runs,
        "growth_mb": growth,
        "goal_growth_mb": GOAL_GROWTH_MB,
        "goal_met": met,
        "tensorflow_import_peak_mib": round(floor_mib, 1),
    }
    table = "\n".join(
        f"| {r['images']:,} | {r['png_mib']:.0f} MiB | {r['decoded_mib']:.0f} MiB "
        f"| {r['build_peak_mib']:.0f} MiB | {r['build_s']:.0f} s "
        f"| {r['train_peak_mib']:.0f} MiB | {r['train_s']:.0f} s |"
        for r in runs
    )
    md = f"""## Image memory (image folder, {small:,} vs {large:,} images of {SIDE}x{SIDE} RGB)

Peak RSS of `tfship build --data FOLDER` and of `tfship train --epochs 1 --batch-size
{args.batch_size}`, each its own process, on two image folders (4 classes, PNGs from one
seeded generator). "Decoded" is the float32 pixels the stages handle.

| images | PNG | decoded | build peak | build time | train peak | train time |
|---|---|---|---|---|---|---|
{table}

**Growth from {small:,} to {large:,} images: build {growth["build"]:+.0f} MB, train
{growth["train"]:+.0f} MB** (goal: under {GOAL_GROWTH_MB} MB each, memory independent of the
data's size): **{"met" if met else "not met"}**.

How: build reads each PNG's header, then decodes one image at a time into a temporary
file, and writes the splits from it a chunk of 1,024 rows at a time (`tfship.rows`); train
reads the split's `.npz` a batch at a time with `pread` (a `tf.data` generator), never
memory-mapping it (mapped pages would count in RSS). Importing TensorFlow and Keras alone
peaks at {floor_mib:.0f} MiB. Before this, a folder was decoded whole into memory (and
refused past `--max-data-bytes`, 512 MiB of pixels): its peak grew with the decoded column.
Times are for context only.
"""
    print(md)
    if not args.no_save:
        save("image_memory", figures, md)


if __name__ == "__main__":
    main()
