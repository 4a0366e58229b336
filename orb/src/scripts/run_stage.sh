#!/usr/bin/env bash
# Run one tfship stage. Orb parameters arrive as PARAM_* variables and are handed to
# tfship as its own environment variables (see `tfship <stage> --help`).
# The logic is in functions and `main` runs only when the script is not sourced by the tests
# (tests/test_orb_scripts.py), as in the slack orb's notify.sh.
set -euo pipefail

set_if() { if [ -n "${2:-}" ]; then export "$1=$2"; fi; }

export_settings() {
  set_if TFSHIP_WORKSPACE "${PARAM_WORKSPACE:-}"
  set_if MODEL_NAME "${PARAM_MODEL_NAME:-}"
  set_if TFSHIP_DATA "${PARAM_DATA:-}"
  # retrain works on the snapshot the build job resolved, validated and left in the
  # workspace (the plan's new_data_uri): a TFSHIP_DATA set for build in the project or a
  # context (a folder of snapshots) would make it build again, maybe from a newer snapshot
  # than the one the pipeline planned and the approver sees. Its data parameter still wins.
  if [ "${PARAM_STAGE:-}" = retrain ] && [ -z "${PARAM_DATA:-}" ]; then
    unset TFSHIP_DATA
  fi
  set_if TFSHIP_EPOCHS "${PARAM_EPOCHS:-}"
  set_if TFSHIP_MIN_ACCURACY "${PARAM_MIN_ACCURACY:-}"
  set_if TF_SERVING_URL "${PARAM_SERVING_URL:-}"
  set_if TFSHIP_SSH_KEY_ENV "${PARAM_SSH_KEY_ENV:-}"
  # tfship reads the known_hosts lines from this variable itself, in memory: no file to write.
  set_if TFSHIP_KNOWN_HOSTS_ENV "${PARAM_KNOWN_HOSTS_ENV:-}"
  # false leaves a TFSHIP_SERVING_TUNNEL set in the project or a context as it is.
  if [ "${PARAM_SERVING_TUNNEL:-}" = "true" ]; then
    export TFSHIP_SERVING_TUNNEL=true
  fi
}

# split_args TEXT: set the array extra_args to the words of TEXT, split by shell quoting
# rules, so that `--message "two words"` or a quoted path with spaces stays one word.
# bash cannot do that without eval, which would also run any $(...) in TEXT; python3's shlex
# parses without running anything. python3 is the venv's (the install step puts it first on
# PATH). The words come back NUL-terminated, the one byte no argument can hold. A malformed
# TEXT (an unbalanced quote) prints one line naming PARAM_EXTRA_ARGS and returns 2.
split_args() {
  extra_args=()
  local word
  while IFS= read -r -d '' word; do
    extra_args+=("$word")
  done < <(python3 -c '
import shlex, sys
try:
    words = shlex.split(sys.argv[1])
except ValueError as exc:
    print(f"run_stage: PARAM_EXTRA_ARGS (the extra_args parameter) is not valid shell quoting"
          f" ({exc}): {sys.argv[1]}", file=sys.stderr)
    sys.exit(2)
sys.stdout.write("".join(word + "\0" for word in words))
' "$1")
  # The loop's status is read's; the parser's is only known by waiting for it.
  wait "$!"
}

main() {
  export_settings
  cd "${PARAM_APP_DIR:-.}"
  local extra_args
  split_args "${PARAM_EXTRA_ARGS:-}" || return
  # %q: the log shows the words exactly as tfship gets them.
  echo "tfship$(printf ' %q' "$PARAM_STAGE" "${extra_args[@]}")"
  tfship "$PARAM_STAGE" "${extra_args[@]}"
}

# When CircleCI runs the step, $0 is the shell; the tests set $0 to contain this marker so that
# sourcing the script defines the functions without running main.
ORB_TEST_ENV="tfship-orb-test"
if [ "${0#*"$ORB_TEST_ENV"}" = "$0" ]; then
  main
fi
