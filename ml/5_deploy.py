#!/usr/bin/env python3
"""Stage 5: deploy to TF Serving over SSH, atomically, with no downtime and automatic rollback.

The same as `tfship deploy`; run with --help for options.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # works without `pip install` too

from tfship.cli import main

if __name__ == "__main__":
    main(["deploy", *sys.argv[1:]], prog_name="5_deploy.py")
