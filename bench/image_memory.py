"""Benchmark: peak memory of `tfship build` and `tfship train` on an image folder, small vs 16x.

Run by hand (`python bench/image_memory.py`); writes bench/results/image_memory.json and the
image_memory section of BENCHMARKS.md. Two image folders (one sub-folder per class, 64x64
RGB PNGs from one seeded generator: a class colour and stripe plus noise) are written to a
temporary folder under /tmp, then `tfship build --data FOLDER` and `tfship train --epochs 1`
each run as their own process; the figure for a stage is that process's peak RSS
(``ru_maxrss`` from ``wait4``). Goal, as for tables (#17): memory independent of the data's
size, a growth from the small folder to the large one under 200 MB for each stage.

What it shows: images are decoded one at a time to disk and read back a batch at a time
(``tfship.rows``). ``--before REV[,REV...]`` runs the same two stages of each commit's code
side by side, in the same run, on the same folders (its source checked out to a temporary
folder, put first on PYTHONPATH), for the ratios. Default: 6ace553, the last commit that
decoded a folder into memory whole, and 97d98d9, the last before a local image folder was
hashed (its sha256 reads every image once more) and image training joined the tables' path.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, save  # noqa: E402
from table_memory import MIB, peak, tensorflow_floor  # noqa: E402

SIDE = 64
STAGES = ("build", "train", "npz_build")  # the npz build: the same images as one .npz
HEADER = (
    "| images | PNG | decoded | code | build peak | build time | train peak | train time "
    "| .npz build peak | .npz build time |\n|---|---|---|---|---|---|---|---|---|---|"
)
CLASSES = ("red", "green", "blue", "grey")
GOAL_GROWTH_MB = 200


def write_folder(root: Path, images: int, seed: int = 0) -> int:
    """``images`` PNGs in one sub-folder per class, and the same images as one
    ``np.savez_compressed`` file beside the folder (``<root>.npz``: uint8 pixels, labels);
    returns the PNGs' bytes."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    pixels = np.empty((images, SIDE, SIDE, 3), np.uint8)
    colours = np.array([[200, 40, 40], [40, 200, 40], [40, 40, 200], [120, 120, 120]])
    for name in CLASSES:
        (root / name).mkdir(parents=True)
    for i in range(images):
        cls = i % len(CLASSES)
        base = np.broadcast_to(colours[cls], (SIDE, SIDE, 3)).astype(np.float32)
        stripe = (np.arange(SIDE) // (4 + 2 * cls)) % 2
        img = base * (0.7 + 0.3 * stripe[None, :, None]) + rng.normal(0, 40, (SIDE, SIDE, 3))
        pixels[i] = np.clip(img, 0, 255).astype(np.uint8)
        Image.fromarray(pixels[i]).save(root / CLASSES[cls] / f"{i:06d}.png")
    labels = np.arange(images) % len(CLASSES)
    np.savez_compressed(root.with_suffix(".npz"), images=pixels, labels=labels)
    return sum(p.stat().st_size for p in root.rglob("*.png"))


def tfship(src: Path | None) -> list[str]:
    """The command that runs tfship: this checkout's, or the source at ``src``."""
    python = str(ROOT / ".venv" / "bin" / "python")
    return (
        ["env", f"PYTHONPATH={src / 'ml'}", python, "-m", "tfship"]
        if src
        else [python, "-m", "tfship"]
    )


def stages(folder: Path, batch_size: int, src: Path | None, tag: str) -> dict:
    """build then train (one epoch) of ``src``'s tfship on ``folder/photos``: peaks, times."""
    ws = ["--workspace", str(folder / f"ws-{tag}")]
    cap = ["--max-data-bytes", str(1 << 40)] if src else []  # the old code capped pixels
    build = [*tfship(src), "build", *ws, "--data", str(folder / "photos"), *cap]
    build_mib, build_s, _ = peak(build, folder, folder / f"build-{tag}.log")
    print(f"  {tag} build: peak {build_mib:.0f} MiB, {build_s:.0f} s", flush=True)
    train = [*tfship(src), "train", *ws, "--epochs", "1", "--batch-size", str(batch_size)]
    train_mib, train_s, _ = peak(train, folder, folder / f"train-{tag}.log")
    print(f"  {tag} train: peak {train_mib:.0f} MiB, {train_s:.0f} s", flush=True)
    npz_ws = ["--workspace", str(folder / f"ws-npz-{tag}")]
    classes = ["--num-classes", str(len(CLASSES))]  # an .npz has no folder names to count
    npz = [*tfship(src), "build", *npz_ws, "--data", str(folder / "photos.npz"), *classes, *cap]
    npz_mib, npz_s, _ = peak(npz, folder, folder / f"npz-{tag}.log")
    print(f"  {tag} build .npz: peak {npz_mib:.0f} MiB, {npz_s:.0f} s", flush=True)
    for schema in (folder / "photos" / "schema.pbtxt", folder / "schema.pbtxt"):
        schema.unlink(missing_ok=True)  # each run infers its own
    return {
        "build_peak_mib": round(build_mib, 1),
        "build_s": round(build_s, 1),
        "train_peak_mib": round(train_mib, 1),
        "train_s": round(train_s, 1),
        "npz_build_peak_mib": round(npz_mib, 1),
        "npz_build_s": round(npz_s, 1),
    }


BEFORE = {  # what each default comparison commit stands for
    "6ace553": "a folder decoded whole into memory",
    "97d98d9": "no image-folder sha256; images trained apart from tables",
}


def measure(images: int, batch_size: int, tmp: Path, before: dict[str, Path]) -> dict:
    folder = tmp / f"{images}"
    t = time.perf_counter()
    # in a subprocess: a child's peak RSS counts the peak of the process it was forked from
    # (see table_memory.peak), and writing holds the images as one array for the .npz
    subprocess.run(
        [sys.executable, __file__, "--write", str(folder / "photos"), str(images)], check=True
    )
    nbytes = sum(p.stat().st_size for p in (folder / "photos").rglob("*.png"))
    decoded = images * SIDE * SIDE * 3 * 4 / MIB  # float32 pixels, what build/train handle
    print(
        f"{images} images: {nbytes / MIB:.0f} MiB of PNG ({decoded:.0f} MiB decoded) in "
        f"{time.perf_counter() - t:.0f} s",
        flush=True,
    )
    now = stages(folder, batch_size, None, "now")
    out = {"images": images, "png_mib": round(nbytes / MIB, 1), "decoded_mib": round(decoded, 1)}
    out.update(now)
    out["before"] = {rev: stages(folder, batch_size, src, rev) for rev, src in before.items()}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", default="1000,16000", help="images, small,large")
    parser.add_argument("--batch-size", type=int, default=64, help="tfship train --batch-size")
    parser.add_argument(
        "--before", default="6ace553,97d98d9", help="commits to compare with ('' for none)"
    )
    parser.add_argument("--no-save", action="store_true", help="print only (for a trial run)")
    parser.add_argument("--write", nargs=2, metavar=("FOLDER", "N"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.write:  # the subprocess that writes one folder (and its .npz)
        write_folder(Path(args.write[0]), int(args.write[1]))
        return
    small, large = (int(s) for s in args.sizes.split(","))
    with tempfile.TemporaryDirectory(prefix="tfship-bench-img-", dir="/tmp") as tmp:
        floor_mib = tensorflow_floor(Path(tmp))
        before: dict[str, Path] = {}
        for rev in filter(None, args.before.split(",")):
            before[rev] = Path(tmp) / f"before-{rev}"
            before[rev].mkdir()
            archive = subprocess.run(
                ["git", "-C", str(ROOT), "archive", rev, "ml"], check=True, capture_output=True
            ).stdout
            subprocess.run(["tar", "-x", "-C", str(before[rev])], input=archive, check=True)
        runs = [measure(n, args.batch_size, Path(tmp), before) for n in (small, large)]
    a, b = runs
    growth = {
        stage: round((b[f"{stage}_peak_mib"] - a[f"{stage}_peak_mib"]) * MIB / 1e6, 1)
        for stage in STAGES
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

    def row(r: dict, code: str, m: dict) -> str:
        return (
            f"| {r['images']:,} | {r['png_mib']:.0f} MiB | {r['decoded_mib']:.0f} MiB | {code} "
            f"| {m['build_peak_mib']:.0f} MiB | {m['build_s']:.0f} s "
            f"| {m['train_peak_mib']:.0f} MiB | {m['train_s']:.0f} s "
            f"| {m['npz_build_peak_mib']:.0f} MiB | {m['npz_build_s']:.0f} s |"
        )

    lines = []
    for r in runs:
        lines += [row(r, f"before ({rev})", m) for rev, m in r["before"].items()]
        lines.append(row(r, "now", r))
    table = "\n".join(lines)
    sentences = []
    for rev, old in b["before"].items():
        old_growth = {
            stage: round(
                (old[f"{stage}_peak_mib"] - a["before"][rev][f"{stage}_peak_mib"]) * MIB / 1e6, 1
            )
            for stage in STAGES
        }
        ratio = {
            f"{stage}_{what}": round(b[f"{stage}_{key}"] / old[f"{stage}_{key}"], 3)
            for stage in STAGES
            for what, key in (("peak", "peak_mib"), ("time", "s"))
        }
        figures.setdefault("before", {})[rev] = {
            "growth_mb": old_growth,
            "large_ratio_now_vs": ratio,
        }
        sentences.append(
            f"- {rev} ({BEFORE.get(rev, 'the code then')}): grew build "
            f"{old_growth['build']:+.0f} MB, train {old_growth['train']:+.0f} MB and the .npz "
            f"build {old_growth['npz_build']:+.0f} MB; on {large:,} images the peaks now are "
            f"{ratio['build_peak']:.2f}x (build), {ratio['train_peak']:.2f}x (train) and "
            f"{ratio['npz_build_peak']:.2f}x (.npz build) of its, the times "
            f"{ratio['build_time']:.2f}x, {ratio['train_time']:.2f}x and "
            f"{ratio['npz_build_time']:.2f}x."
        )
    ratios = (
        "\nSide by side in this run, on the same two folders:\n\n" + "\n".join(sentences) + "\n"
        if sentences
        else ""
    )
    md = f"""## Image memory (image folder, {small:,} vs {large:,} images of {SIDE}x{SIDE} RGB)

Peak RSS of `tfship build --data FOLDER` and of `tfship train --epochs 1 --batch-size
{args.batch_size}`, each its own process, on two image folders (4 classes, PNGs from one
seeded generator), and of `tfship build --data photos.npz` on the same images saved with
`np.savez_compressed` (uint8). "Decoded" is the float32 pixels the stages handle.

{HEADER}
{table}

**Growth from {small:,} to {large:,} images: build {growth["build"]:+.0f} MB, train
{growth["train"]:+.0f} MB, .npz build {growth["npz_build"]:+.0f} MB** (goal: under
{GOAL_GROWTH_MB} MB each, memory independent of the data's size):
**{"met" if met else "not met"}**.
{ratios}
How: build reads each PNG's header, then decodes one image at a time into a temporary
file, and writes the splits from it 16 MiB of pixels at a time (`tfship.rows`); the folder's
sha256 (each image's path, size and bytes) reads every file once more, 1 MiB at a time; a
local `.npz`'s images are inflated to a temporary file 16 MiB at a time; train
reads the split's `.npz` a batch at a time with `pread` (a `tf.data` generator), never
memory-mapping it (mapped pages would count in RSS). Importing TensorFlow and Keras alone
peaks at {floor_mib:.0f} MiB. Before, a folder (6ace553) and an `.npz` (both commits) were
read whole into memory (and refused past `--max-data-bytes`, 512 MiB; the bench lifts that
cap for the old code). Times are for context only: the same code's one-epoch train on 16,000
images took 56 s in one run and 87 s in the next (2026-12-02, this machine), so the train
time ratios above are not findings.
"""
    print(md)
    if not args.no_save:
        save("image_memory", figures, md)


if __name__ == "__main__":
    main()
