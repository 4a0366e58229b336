#!/usr/bin/env bash
# Set up tfship on a fresh machine: Python package and, with --test, what the tests need.
#   tools/setup.sh          pip install -e ".[dev]"     (run the pipeline)
#   tools/setup.sh --test   + dev tools, openssh-server and shellcheck via apt-get (run the tests)
set -euo pipefail
cd "$(dirname "$0")/.."

want_test=false
for arg in "$@"; do
  case "$arg" in
    --test) want_test=true ;;
    -h|--help) sed -n '2,4p' "$0"; exit 0 ;;
    *) echo "setup.sh: unknown option $arg (use --test or nothing)" >&2; exit 2 ;;
  esac
done

python3 -m pip install -q --disable-pip-version-check -e ".[dev]"

if $want_test; then
  missing=()
  command -v sshd >/dev/null 2>&1 || [ -x /usr/sbin/sshd ] || missing+=(openssh-server)
  command -v shellcheck >/dev/null 2>&1 || missing+=(shellcheck)
  if [ "${#missing[@]}" -gt 0 ]; then
    sudo_cmd=()
    [ "$(id -u)" -eq 0 ] || sudo_cmd=(sudo)
    "${sudo_cmd[@]}" apt-get update -qq
    DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -qq "${missing[@]}" >/dev/null
  fi
fi
echo "setup: tfship $(python3 -c 'import tfship; print(tfship.__version__)') installed"
