#!/usr/bin/env bash
# Install tfship into a virtual environment (app_dir/.venv) and put it first on PATH for later
# steps. What is installed:
#   - PARAM_PACKAGE empty, app_dir has uv.lock (tfship's own repository, or a team's project
#     that locks tfship): `uv sync --locked`, exactly the locked versions.
#   - PARAM_PACKAGE empty, no uv.lock: the released tfship at this orb's version, pinned to the
#     versions of its lock (PARAM_CONSTRAINTS: tools/orb_pins.py exports them from uv.lock).
#   - PARAM_PACKAGE set: that pip requirement (tfship==0.2.0, a wheel, a git URL, `.`).
# PARAM_TRAIN=true (the jobs that build, train, test, package or retrain) adds the train
# extra: TensorFlow and the rest; PARAM_CUDA=true (the gpu executor) the cuda extra instead,
# TensorFlow with its CUDA libraries. Other jobs get the slim install (BENCHMARKS.md, install).
# A venv, not the system Python: Ubuntu 24.04 machine images refuse system installs (PEP 668).
# If this very checkout's tfship is already importable (a warm self-hosted runner,
# `tfship ci local`), nothing is reinstalled.
set -euo pipefail

wants_cuda() { [ "${PARAM_CUDA:-false}" = true ]; }
# CUDA implies training: the cuda extra is the train extra plus TensorFlow's CUDA libraries.
wants_train() { [ "${PARAM_TRAIN:-false}" = true ] || wants_cuda; }
# The extra a training job installs: train, or cuda on a GPU executor.
train_extra() { if wants_cuda; then echo cuda; else echo train; fi; }

# This checkout's own tfship is what `python3` imports.
checkout_installed() {
  python3 - <<'PY' 2>/dev/null
import pathlib, sys
import tfship
sys.exit(0 if pathlib.Path.cwd().resolve() in pathlib.Path(tfship.__file__).resolve().parents else 1)
PY
}

# No lock, no package named: the release this orb installs (PARAM_CONSTRAINTS's tfship==X) is
# what `python3` imports already, with TensorFlow if the job trains (a team's repository under
# `tfship ci local`, a warm self-hosted runner).
release_installed() {
  [ -z "${PARAM_PACKAGE:-}" ] && [ ! -f uv.lock ] || return 1
  RELEASE="$(printf '%s\n' "${PARAM_CONSTRAINTS:-}" | sed -n 's/^tfship==//p' | head -n 1)" \
    python3 - <<'PY' 2>/dev/null
import importlib.util, os, sys
import tfship
train = os.environ.get("PARAM_TRAIN") == "true"
ok = tfship.__version__ == os.environ["RELEASE"] and (
    not train or importlib.util.find_spec("tensorflow") is not None
)
sys.exit(0 if ok else 1)
PY
}

# The uv on PATH, if it is the pinned release or a newer one: CircleCI's cimg/python images
# ship uv (their latest at build time), and a newer uv installs the same pinned versions (the
# lock or the release's pins fix what is installed, not the installer). Else nothing.
usable_uv() {
  local uv have
  uv="$(command -v uv || true)"
  [ -n "$uv" ] || return 0
  have="$("$uv" --version 2>/dev/null | cut -d' ' -f2)"
  [ -n "$have" ] || return 0
  local lowest
  lowest="$(printf '%s\n%s\n' "${PARAM_UV_VERSION:?}" "$have" | sort -V | head -n 1)"
  if [ "$lowest" = "$PARAM_UV_VERSION" ]; then echo "$uv"; fi
}

# The project declares the extra $1 (tfship declares train and cuda; a team's project may
# mirror them).
declares_extra() {
  EXTRA="$1" python3 - <<'PY'
import os, sys, tomllib
with open("pyproject.toml", "rb") as f:
    extras = tomllib.load(f).get("project", {}).get("optional-dependencies", {})
sys.exit(0 if os.environ["EXTRA"] in extras else 1)
PY
}

# The uv command (its arguments, in INSTALL) that installs what the parameters ask for into
# the venv $1, with the release's pins in file $2. With the train extra bytecode is compiled
# now: with PYTHONDONTWRITEBYTECODE set, every `import tensorflow` would compile it again (8 s).
# The slim install compiles nothing: its commands import a small part of what it installs
# (botocore alone is 1,000 files), and Python writes the bytecode of what they do import.
install_command() {
  local venv="$1" pins="$2" compile=()
  if wants_train; then compile=(--compile-bytecode); fi
  if [ -z "${PARAM_PACKAGE:-}" ] && [ -f uv.lock ]; then
    INSTALL=(sync --locked --no-dev)
    if wants_train; then
      if declares_extra "$(train_extra)"; then
        INSTALL+=(--extra "$(train_extra)")
      else
        echo "NOTE: pyproject.toml declares no '$(train_extra)' extra: installing what uv.lock holds" >&2
      fi
    fi
    INSTALL+=(--python python3 "${compile[@]}")
    return
  fi
  INSTALL=(pip install --python "$venv/bin/python" "${compile[@]}")
  if [ -n "${PARAM_PACKAGE:-}" ]; then
    INSTALL+=("$PARAM_PACKAGE")
    # The extra of whatever tfship that requirement brings.
    if wants_train; then INSTALL+=("tfship[$(train_extra)]"); fi
  else
    INSTALL+=(--constraint "$pins")
    if wants_train; then INSTALL+=("tfship[$(train_extra)]"); else INSTALL+=(tfship); fi
  fi
}

main() {
  cd "${PARAM_APP_DIR:-.}"
  if [ -z "${PARAM_PACKAGE:-}" ] && checkout_installed; then
    echo "tfship from this checkout is already installed"
    tfship --version
    return 0
  fi
  if release_installed; then
    echo "tfship $(python3 -c 'import tfship; print(tfship.__version__)') (this orb's release) is already installed"
    return 0
  fi
  local tools venv="$PWD/.venv" uv
  tools="$(mktemp -d)"
  # shellcheck disable=SC2064  # expand now: $tools is local to main
  trap "rm -rf '$tools'" EXIT
  # uv: the image's if it is the pinned release or newer (usable_uv), else pip installs the
  # pinned one. uv installs in seconds what pip takes a minute for.
  uv="$(usable_uv)"
  if [ -z "$uv" ]; then
    uv="$tools/uv/bin/uv"
    if python3 -c 'import importlib.util as u, sys; sys.exit(u.find_spec("pip") is None)'; then
      # Into a folder: no venv to create (its pip bootstrap takes longer than uv's download),
      # and PEP 668 does not refuse a --target. uv is one binary: nothing to compile.
      python3 -m pip install -q --disable-pip-version-check --no-deps --no-compile \
        --target "$tools/uv" "uv==${PARAM_UV_VERSION}"
    else
      python3 -m venv "$tools/uv"
      "$tools/uv/bin/pip" install -q --disable-pip-version-check "uv==${PARAM_UV_VERSION}"
    fi
  fi
  printf '%s\n' "${PARAM_CONSTRAINTS:-}" > "$tools/pins.txt"
  install_command "$venv" "$tools/pins.txt"
  if [ "${INSTALL[0]}" = pip ]; then
    [ -n "${PARAM_PACKAGE:-}" ] || echo "The release: $(grep -m 1 '^tfship==' "$tools/pins.txt")"
    "$uv" venv --quiet --allow-existing --python python3 "$venv"
  fi
  echo "uv ${INSTALL[*]}"
  UV_PROJECT_ENVIRONMENT="$venv" "$uv" "${INSTALL[@]}"
  echo "export PATH=\"$venv/bin:\$PATH\"" >> "$BASH_ENV"
  "$venv/bin/tfship" --version
}

# Sourced by the tests with $0 set to this marker: define the functions, run nothing.
ORB_TEST_ENV="tfship-orb-test"
if [ "${0#*"$ORB_TEST_ENV"}" = "$0" ]; then
  main
fi
