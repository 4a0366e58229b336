#!/usr/bin/env bash
# Install tfship into a virtual environment and put it first on PATH for later steps.
#   - app_dir has uv.lock: `uv sync --locked` installs exactly the locked versions.
#   - PARAM_PACKAGE: that pip requirement, into the venv.
#   - otherwise `pip install -e app_dir`, with a warning: without a lock, versions float.
# A venv, not the system Python: Ubuntu 24.04 machine images refuse system installs (PEP 668).
# If this very checkout's tfship is already importable (a warm self-hosted runner,
# `tfship ci local`), nothing is reinstalled.
set -euo pipefail
cd "${PARAM_APP_DIR:-.}"
if [ -z "${PARAM_PACKAGE:-}" ] && python3 - <<'PY' 2>/dev/null
import pathlib, sys
import tfship
sys.exit(0 if pathlib.Path.cwd().resolve() in pathlib.Path(tfship.__file__).resolve().parents else 1)
PY
then
  echo "tfship from this checkout is already installed"
  tfship --version
  exit 0
fi

venv="$PWD/.venv"
if [ -z "${PARAM_PACKAGE:-}" ] && [ -f uv.lock ]; then
  tools="$(mktemp -d)"
  python3 -m venv "$tools/uv"
  "$tools/uv/bin/pip" install -q --disable-pip-version-check "uv==${PARAM_UV_VERSION:?}"
  UV_PROJECT_ENVIRONMENT="$venv" "$tools/uv/bin/uv" sync --locked --no-dev --python python3 \
    --compile-bytecode
else
  python3 -m venv "$venv"
  if [ -n "${PARAM_PACKAGE:-}" ]; then
    "$venv/bin/pip" install -q --disable-pip-version-check "$PARAM_PACKAGE"
  else
    echo "WARNING: no uv.lock in $PWD: dependency versions are whatever pip resolves today" >&2
    "$venv/bin/pip" install -q --disable-pip-version-check -e .
  fi
fi
echo "export PATH=\"$venv/bin:\$PATH\"" >> "$BASH_ENV"
"$venv/bin/tfship" --version
