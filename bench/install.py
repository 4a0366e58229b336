"""Benchmark: the orb's install step, slim (deploy, verify, notify, plan jobs) vs full (train).

Run by hand (`nice -n 19 python bench/install.py`); writes bench/results/install.json and
the install section of BENCHMARKS.md. Each install is orb/src/scripts/install.sh run whole, as
CircleCI runs a step (`bash -eo pipefail -c`), from nothing, as a job without a cache: a fresh
folder, empty uv and pip caches (UV_CACHE_DIR, PIP_CACHE_DIR in it), uv itself installed by
pip, every dependency downloaded from the package registry. Two ways, each slim and full,
interleaved within each round (slim, full; then full, slim; ...):

- release, the default in any repository (no `package`, no uv.lock): the released tfship at the
  orb's version with its lock's pins (`uv pip install tfship[train] --constraint ...`). tfship
  is not on the registry yet: its wheel, built once beforehand, comes from a local folder
  (UV_FIND_LINKS); all of its dependencies from the registry;
- lock: a copy of this project (pyproject.toml, uv.lock, ml/): `uv sync --locked --no-dev`
  (full: `--extra train`), which also builds tfship itself.

Reported: medians over rounds of wall and CPU time (the install and all it started), the
installed size (site-packages, bytes on disk) and the slim/full ratios (wall: the median over
rounds of the paired ratio). Goal: the slim install in under 10% of the full one's time.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, ROOT, save  # noqa: E402

GOAL = 0.10
SCRIPTS = ROOT / "orb" / "src" / "scripts"
UV = ROOT / ".tools" / "uv" / "bin" / "uv"
KINDS = ("slim", "full")
# How tfship comes (the released wheel + pins, or a project's uv.lock), and on what image:
# CircleCI's cimg/python (the orb's default executor) ships uv, which install.sh uses as it is
# when it is the pinned release or newer (here: the repository's uv, at the pinned release);
# a bare Python image has none, and pip installs it first.
WAYS = ("release", "lock", "release-bare", "lock-bare")
LABELS = {
    "release": "released tfship + pins (default), cimg/python (uv on the image)",
    "lock": "uv.lock, cimg/python (uv on the image)",
    "release-bare": "released tfship + pins, a bare Python image (pip installs uv first)",
    "lock-bare": "uv.lock, a bare Python image (pip installs uv first)",
}


def uv_version() -> str:
    """The uv release the orb's install command pins (its parameter's default)."""
    doc = yaml.safe_load((ROOT / "orb" / "src" / "commands" / "install.yml").read_text())
    return str(doc["parameters"]["uv_version"]["default"])


def project_copy(dest: Path) -> Path:
    """What a checkout holds that the install reads: pyproject.toml, uv.lock, README, ml/."""
    dest.mkdir(parents=True)
    for name in ("pyproject.toml", "uv.lock", "README.md"):
        shutil.copy2(ROOT / name, dest / name)
    shutil.copytree(ROOT / "ml", dest / "ml", ignore=shutil.ignore_patterns("__pycache__"))
    return dest


def clean_env(tmp: Path, image_uv: bool) -> dict[str, str]:
    """No venv, no caches, no settings of ours: `python3` is a bare interpreter; with
    ``image_uv``, a uv on PATH as cimg/python images have one."""
    bin_dir = tmp / "bin"
    bin_dir.mkdir()
    # The interpreter under this venv, as the executor's python3: no tfship importable.
    (bin_dir / "python3").symlink_to(Path(sys._base_executable).resolve())
    if image_uv:
        (bin_dir / "uv").symlink_to(UV.resolve())
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("UV_", "PIP_", "PARAM_", "TFSHIP_", "VIRTUAL_ENV", "PYTHON"))
    }
    env.update(
        # only the system's tools besides: no uv but the one placed above
        PATH=os.pathsep.join((str(bin_dir), "/usr/bin", "/bin")),
        UV_CACHE_DIR=str(tmp / "cache" / "uv"),
        PIP_CACHE_DIR=str(tmp / "cache" / "pip"),
        XDG_CACHE_HOME=str(tmp / "cache"),
        HOME=str(tmp / "home"),
        TMPDIR=str(tmp),  # install.sh's own temporary folder goes with the rest
    )
    (tmp / "home").mkdir()
    return env


def site_packages_bytes(venv: Path) -> tuple[int, int]:
    """Bytes on disk under the venv's site-packages, and how many distributions it holds."""
    (site,) = venv.glob("lib/python3*/site-packages")
    out = subprocess.run(["du", "-sb", str(site)], capture_output=True, text=True, check=True)
    return int(out.stdout.split()[0]), len(list(site.glob("*.dist-info")))


def build_wheel(work: Path) -> Path:
    """tfship's wheel, as a release would publish it, in a folder of its own."""
    src = project_copy(work / "src")
    wheels = work / "wheels"
    subprocess.run(
        [str(UV), "build", "--quiet", "--wheel", "--out-dir", str(wheels), str(src)], check=True
    )
    return wheels


def install(kind: str, how: str, work: Path, wheels: Path) -> dict:
    """One install from nothing; its wall and CPU time and what it left."""
    tmp = Path(tempfile.mkdtemp(prefix=f"tfship-bench-install-{kind}-", dir=work))
    try:
        env = clean_env(tmp, image_uv=not how.endswith("-bare"))
        if how.startswith("lock"):
            app = project_copy(tmp / "project")
        else:
            app = tmp / "project"
            app.mkdir()
            env["UV_FIND_LINKS"] = str(wheels)
        train = kind == "full"
        env.update(
            PARAM_APP_DIR=str(app),
            PARAM_PACKAGE="",
            PARAM_TRAIN="true" if train else "false",
            PARAM_UV_VERSION=uv_version(),
            PARAM_CONSTRAINTS=(SCRIPTS / "install_constraints.txt").read_text(),
            BASH_ENV=str(tmp / "bash_env"),
        )
        cmd = ["/bin/bash", "-eo", "pipefail", "-c", (SCRIPTS / "install.sh").read_text()]
        cpu0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        start = time.perf_counter()
        proc = subprocess.run(cmd, cwd=app, env=env, capture_output=True, text=True)
        seconds = time.perf_counter() - start
        cpu1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        # CPU time of the install and everything it started: less sensitive than wall time to
        # other load on a shared machine (it leaves out waiting for the network, though).
        cpu = (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime)
        if proc.returncode != 0:
            raise SystemExit(f"{kind} {how} install failed:\n{proc.stdout}\n{proc.stderr}")
        probe = "import importlib.util as u; print(u.find_spec('tensorflow') is not None)"
        has_tf = subprocess.run(
            [str(app / ".venv" / "bin" / "python"), "-c", probe],
            capture_output=True, text=True, check=True,
        ).stdout.strip() == "True"  # fmt: skip
        if has_tf != train:
            raise SystemExit(f"{kind} install: TensorFlow installed = {has_tf}")
        size, dists = site_packages_bytes(app / ".venv")
        downloaded = int(
            subprocess.run(
                ["du", "-sb", str(tmp / "cache")], capture_output=True, text=True
            ).stdout.split()[0]
        )
        return {"seconds": seconds, "cpu_seconds": cpu, "site_packages_bytes": size,
                "distributions": dists, "cache_bytes": downloaded,
                "load_average": os.getloadavg()[0]}  # fmt: skip
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # ~2 GB per full install: never keep them


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--no-save", action="store_true", help="print only")
    parser.add_argument(
        "--report-only", action="store_true", help="redo the report from the saved runs"
    )
    args = parser.parse_args()
    if args.report_only:
        saved = json.loads((RESULTS / "install.json").read_text())
        report(saved["runs"], saved["rounds"], save_results=not args.no_save)
        return
    work = Path(tempfile.mkdtemp(prefix="tfship-bench-install-"))
    runs: dict[str, dict[str, list[dict]]] = {h: {k: [] for k in KINDS} for h in WAYS}
    try:
        wheels = build_wheel(work)
        for r in range(args.rounds):
            order = KINDS if r % 2 == 0 else KINDS[::-1]
            for how in WAYS:
                for kind in order:
                    res = install(kind, how, work, wheels)
                    runs[how][kind].append(res)
                    print(f"round {r + 1} {how:4} {kind:4} {res['seconds']:7.1f} s "
                          f"(cpu {res['cpu_seconds']:6.1f} s) "
                          f"{res['site_packages_bytes'] / 2**20:7.0f} MiB", flush=True)  # fmt: skip
    finally:
        shutil.rmtree(work, ignore_errors=True)
    report(runs, args.rounds, save_results=not args.no_save)


def report(runs: dict, rounds: int, save_results: bool = True) -> None:
    """The figures, the ratios and the goal; bench/results/install.json and BENCHMARKS.md."""
    med = {
        how: {
            k: {
                "seconds": statistics.median(x["seconds"] for x in runs[how][k]),
                "cpu_seconds": statistics.median(x["cpu_seconds"] for x in runs[how][k]),
                "site_packages_bytes": runs[how][k][0]["site_packages_bytes"],
                "distributions": runs[how][k][0]["distributions"],
                "cache_bytes": runs[how][k][0]["cache_bytes"],
            }
            for k in KINDS
        }
        for how in runs
    }
    pairs = {how: list(zip(runs[how]["slim"], runs[how]["full"], strict=True)) for how in runs}
    ratios = {how: [s["seconds"] / f["seconds"] for s, f in pairs[how]] for how in runs}
    cpu_ratios = {
        how: med[how]["slim"]["cpu_seconds"] / med[how]["full"]["cpu_seconds"] for how in runs
    }
    ratio = statistics.median(ratios["release"])  # the default install: the goal's figure
    met = ratio < GOAL
    figures = {
        "rounds": rounds,
        "uv": uv_version(),
        "medians": med,
        "ratios": ratios,
        "ratio_wall": {how: statistics.median(ratios[how]) for how in runs},
        "ratio_cpu": cpu_ratios,
        "goal": GOAL,
        "goal_met": met,
        "runs": runs,
    }
    loads = [x["load_average"] for how in runs for k in KINDS for x in runs[how][k]]
    mib = 2**20
    rows = []
    for how, label in LABELS.items():
        s, f = med[how]["slim"], med[how]["full"]
        lo, hi = min(ratios[how]), max(ratios[how])
        rows += [
            f"| {label}: wall | {s['seconds']:.1f} s | {f['seconds']:.1f} s | "
            f"**{statistics.median(ratios[how]):.1%}** ({lo:.1%}-{hi:.1%}) |",
            f"| {label}: CPU | {s['cpu_seconds']:.1f} s | {f['cpu_seconds']:.1f} s | "
            f"{cpu_ratios[how]:.1%} |",
        ]
    s, f = med["release"]["slim"], med["release"]["full"]
    rows += [
        f"| installed (site-packages) | {s['site_packages_bytes'] / mib:.0f} MiB | "
        f"{f['site_packages_bytes'] / mib:.0f} MiB | "
        f"{s['site_packages_bytes'] / f['site_packages_bytes']:.1%} |",
        f"| distributions | {s['distributions']} | {f['distributions']} | |",
        f"| uv and pip caches after (wheels unpacked) | {s['cache_bytes'] / mib:.0f} MiB | "
        f"{f['cache_bytes'] / mib:.0f} MiB | "
        f"{s['cache_bytes'] / f['cache_bytes']:.1%} |",
    ]
    table = "\n".join(rows)
    bare = {
        how: statistics.median(x["seconds"] for x in runs[f"{how}-bare"]["slim"])
        - med[how]["slim"]["seconds"]
        for how in ("release", "lock")
        if f"{how}-bare" in runs
    }
    verdict = textwrap.fill(
        f"**Slim install: {ratio:.1%} of the full one's time** (the default install on the "
        f"default executor, wall time; goal < {GOAL:.0%}): **{'met' if met else 'not met'}**. "
        "On a bare Python image: "
        f"{statistics.median(ratios.get('release-bare', [float('nan')])):.1%}. The 1-minute "
        f"load average was {min(loads):.1f}-{max(loads):.1f} on {os.cpu_count()} cores at the "
        "end of the installs (their own work counts in it: a full install keeps both cores "
        "busy); wall times include any wait for a CPU, CPU times do not. Both download from "
        "the package registry over this machine's link; the full install fetches and unpacks "
        f"{med['release']['full']['cache_bytes'] / 2**30:.1f} GiB (uv's cache after it) to the "
        f"slim one's {med['release']['slim']['cache_bytes'] / 2**20:.0f} MiB, so a slower link "
        "to the registry lengthens the full install far more than the slim one.",
        100,
    )
    markdown = f"""
## Installing tfship: slim (`tfship`) vs full (`tfship[train]`)

The orb's install step (`orb/src/scripts/install.sh`, run whole as CircleCI runs a step) from
nothing, as a job without a cache: every dependency from the package registry. The deploy,
test_deployment, notify and plan jobs install the slim one; build, train, test, package and
retrain the full one. Two ways: the default in any repository, the released tfship at the
orb's version with its lock's pins (`uv pip install tfship[train] --constraint ...`; tfship's
own wheel from a local folder, as it is not on the registry yet), and a project with a uv.lock
(this one: `uv sync --locked`, which also builds tfship). Two images: the orb's default
executor, CircleCI's cimg/python, which ships uv (install.sh uses a uv on PATH at the pinned
release {uv_version()} or newer as it is; here the repository's uv, at the pinned release,
stands for it), and a bare Python image, where pip installs uv {uv_version()} first (it costs
the slim install {bare.get("release", 0):.1f} s more here). The slim install compiles no
bytecode up front (its commands import a small part of it; Python writes the bytecode of what
they import); the full one does (TensorFlow's imports).
{rounds} rounds, slim and full interleaved; medians (the wall ratio is the median of the
rounds' slim / full, range in brackets):

| install | slim | full | slim / full |
|---|---|---|---|
{table}

{verdict}
"""
    print(markdown)
    if save_results:
        save("install", figures, markdown)


if __name__ == "__main__":
    main()
