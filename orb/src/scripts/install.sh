#!/usr/bin/env bash
# Install tfship (from the checked-out project, or PARAM_PACKAGE from PyPI).
set -euo pipefail
cd "${PARAM_APP_DIR:-.}"
python3 -m pip install --upgrade pip >/dev/null
if [ -n "${PARAM_PACKAGE:-}" ]; then
  python3 -m pip install "$PARAM_PACKAGE"
else
  python3 -m pip install -e .
fi
tfship --version
