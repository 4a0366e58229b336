#!/usr/bin/env bash
# Send a notification when the job's status matches PARAM_EVENT (fail|pass|always), or an
# "approval waiting" notice (PARAM_EVENT=approval). Never fails the job.
# The logic is in functions and `main` runs only when the script is not sourced by the tests
# (tests/test_orb_scripts.py), as in the slack orb's notify.sh.
set -uo pipefail

# event_to_send STATUS WANTED: print the `tfship notify --event` value for a job that ended
# with STATUS (pass|fail) when the step asked for WANTED (fail|pass|always|approval); return 1,
# printing nothing, when this job should not notify. An approval notice goes out only for a
# job that passed: a failed retrain leaves nothing to approve.
event_to_send() {
  local status="$1" wanted="$2"
  case "$wanted" in
    always) echo "$status" ;;
    approval) if [ "$status" = fail ]; then return 1; fi; echo approval ;;
    "$status") echo "$status" ;;
    *) return 1 ;;
  esac
}

# build_notify_args EVENT: set the array notify_args to the tfship arguments for EVENT, from the
# PARAM_* variables; optional ones only when set, so tfship's own defaults apply otherwise.
build_notify_args() {
  notify_args=(notify --event "$1" --webhook-env "$PARAM_WEBHOOK_ENV" --format "$PARAM_FORMAT")
  if [ -n "${PARAM_STAGE:-}" ]; then notify_args+=(--stage "$PARAM_STAGE"); fi
  if [ -n "${PARAM_MESSAGE:-}" ]; then notify_args+=(--message "$PARAM_MESSAGE"); fi
  if [ -n "${PARAM_EVIDENCE:-}" ]; then notify_args+=(--evidence "$PARAM_EVIDENCE"); fi
}

main() {
  # The on_fail step of the notify command records a failure; no record means the job passed.
  local status="${TFSHIP_JOB_STATUS:-pass}" event
  if ! event="$(event_to_send "$status" "$PARAM_EVENT")"; then
    echo "notify: job status is $status, notifying on $PARAM_EVENT only"
    return 0
  fi
  local notify_args
  build_notify_args "$event"
  cd "${PARAM_APP_DIR:-.}" || return 0
  tfship "${notify_args[@]}" || echo "notify: could not notify (the job's result stands)"
}

# When CircleCI runs the step, $0 is the shell; the tests set $0 to contain this marker so that
# sourcing the script defines the functions without running main.
ORB_TEST_ENV="tfship-orb-test"
if [ "${0#*"$ORB_TEST_ENV"}" = "$0" ]; then
  main
fi
