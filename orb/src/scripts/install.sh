#!/usr/bin/env bash
# Install tfship (from the checked-out project, or PARAM_PACKAGE from PyPI). If this very
# checkout's tfship is already importable (a warm self-hosted runner, `tfship ci local`),
# nothing is reinstalled.
set -euo pipefail
cd "${PARAM_APP_DIR:-.}"
if [ -z "${PARAM_PACKAGE:-}" ] && python3 - <<'PY' 2>/dev/null
import pathlib, sys
import tfship
sys.exit(0 if pathlib.Path.cwd().resolve() in pathlib.Path(tfship.__file__).resolve().parents else 1)
PY
then
  echo "tfship from this checkout is already installed"
elif [ -n "${PARAM_PACKAGE:-}" ]; then
  python3 -m pip install "$PARAM_PACKAGE"
else
  python3 -m pip install -e .
fi
tfship --version
