#!/usr/bin/env bash
# Set up tfship on a fresh machine that has only python3 (3.11-3.13): a project virtual
# environment in .venv holding exactly the versions in uv.lock (hashes checked).
#   tools/setup.sh          .venv with tfship[train] and its locked dependencies  (then: .venv/bin/tfship run)
#   tools/setup.sh --test   + the dev tools, openssh-server and shellcheck  (then: .venv/bin/python -m pytest)
# Nothing is installed into the system Python (PEP 668 refuses that on current Debian/Ubuntu).
# uv itself is installed, hash-pinned (tools/uv-requirements.txt), into .tools/uv.
set -euo pipefail
cd "$(dirname "$0")/.."

want_test=false
for arg in "$@"; do
  case "$arg" in
    --test) want_test=true ;;
    -h|--help) sed -n '2,7p' "$0"; exit 0 ;;
    *) echo "setup.sh: unknown option $arg (use --test or nothing)" >&2; exit 2 ;;
  esac
done

fail() { echo "setup.sh: $*" >&2; exit 2; }

python="${PYTHON:-python3}"
command -v "$python" >/dev/null 2>&1 || fail "no $python on PATH: install Python 3.11-3.13 (or set PYTHON=/path/to/python3.12)"
"$python" - <<'EOF' || fail "$("$python" -V 2>&1) is not supported: TensorFlow 2.21 needs Python 3.11-3.13 (set PYTHON=/path/to/python3.12)"
import sys
sys.exit(0 if (3, 11) <= sys.version_info[:2] <= (3, 13) else 1)
EOF
python="$(command -v "$python")"

as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }
apt_install() {
  command -v apt-get >/dev/null 2>&1 || fail "please install: $* (no apt-get on this machine)"
  as_root apt-get update -qq
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq "$@" >/dev/null
}

# 1. uv, pinned by hash, in its own small venv (so `uv sync` never removes it from .venv).
uv=.tools/uv/bin/uv
want_uv="$(sed -n 's/^uv==\([0-9.]*\).*/\1/p' tools/uv-requirements.txt)"
if [ ! -x "$uv" ] || [ "$("$uv" --version 2>/dev/null | cut -d' ' -f2)" != "$want_uv" ]; then
  rm -rf .tools/uv
  if ! "$python" -m venv .tools/uv 2>/dev/null; then
    # Debian/Ubuntu ship venv's pip bootstrap (ensurepip) in a separate package.
    rm -rf .tools/uv
    minor="$("$python" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')"
    echo "setup: $python cannot create a venv (no ensurepip); installing python$minor-venv"
    apt_install "python$minor-venv"
    "$python" -m venv .tools/uv
  fi
  .tools/uv/bin/python -m pip install -q --disable-pip-version-check --require-hashes \
    -r tools/uv-requirements.txt
fi

# 2. The project venv, exactly as locked. --locked fails if pyproject.toml changed without a
#    refreshed uv.lock, instead of resolving something new on this machine. Bytecode is
#    compiled now (pip does it, uv does not by default): with PYTHONDONTWRITEBYTECODE set, as
#    on many CI machines, every `import tensorflow` would otherwise recompile it (8 s, not 3.5).
#    The train extra always: the README's `tfship run` trains, and so do the tests.
extras=(--no-dev --extra train)
$want_test && extras=(--extra train --extra dev)
UV_PROJECT_ENVIRONMENT=.venv "$uv" sync --locked --quiet --python "$python" \
  --no-python-downloads --compile-bytecode "${extras[@]}"

# 3. System packages the tests start for real.
if $want_test; then
  missing=()
  command -v sshd >/dev/null 2>&1 || [ -x /usr/sbin/sshd ] || missing+=(openssh-server)
  command -v shellcheck >/dev/null 2>&1 || missing+=(shellcheck)
  [ "${#missing[@]}" -eq 0 ] || apt_install "${missing[@]}"
fi
echo "setup: tfship $(.venv/bin/python -c 'import tfship; print(tfship.__version__)') installed in .venv (run .venv/bin/tfship, or source .venv/bin/activate)"
