#!/usr/bin/env python3
"""Write the orb's copy of tfship's pins: orb/src/scripts/install_constraints.txt.

The orb's install step, given no `package` and no uv.lock of the user's own, installs the
released tfship at the orb's version with these pins as constraints (`uv pip install
--constraint`): the versions of uv.lock, the ones the release's tests passed with. The file is
exported from uv.lock (every dependency of tfship[train]; a slim install takes the subset it
needs) with `tfship==<version>` first, and packed into the orb by tools/pack_orb.py.

    python tools/orb_pins.py            # after `.tools/uv/bin/uv lock`; then tools/pack_orb.py
    python tools/orb_pins.py --check    # exit 1 if the file is not uv.lock's pins (the tests)
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PINS = ROOT / "orb" / "src" / "scripts" / "install_constraints.txt"
UV = ROOT / ".tools" / "uv" / "bin" / "uv"
PLATFORMS = "sys_platform == 'darwin' or sys_platform == 'linux'"
HEADER = "# tfship's pins for the orb's install (tools/orb_pins.py, from uv.lock): do not edit\n"


def pins_text() -> str:
    """The file's text: the header, tfship==version, then uv.lock's pins for tfship[train]."""
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    exported = subprocess.run(
        [str(UV), "export", "--frozen", "--no-hashes", "--no-dev", "--no-emit-project",
         "--extra", "train", "--no-annotate", "--no-header", "--format", "requirements-txt"],
        cwd=ROOT, capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    # Every pin carries the lock's platforms (tool.uv.environments); the orb runs on Linux and
    # the lines must stay short enough to read in the packed orb, so that part is left out.
    exported = exported.replace(f" and ({PLATFORMS})", "").replace(f" ; {PLATFORMS}", "")
    return f"{HEADER}tfship=={version}\n{exported}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if the file is stale")
    args = parser.parse_args()
    if not UV.is_file():
        print(f"orb_pins: no {UV.relative_to(ROOT)}: run tools/setup.sh first", file=sys.stderr)
        return 2
    text = pins_text()
    if args.check:
        if not PINS.is_file() or PINS.read_text() != text:
            print(f"{PINS.relative_to(ROOT)} is not uv.lock's pins: run tools/orb_pins.py, "
                  "then tools/pack_orb.py", file=sys.stderr)  # fmt: skip
            return 1
        return 0
    PINS.write_text(text)
    print(f"wrote {PINS.relative_to(ROOT)} ({text.count(chr(10)) - 1} pins)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
