#!/usr/bin/env bash
# Send a notification when the job's status matches PARAM_EVENT (fail|pass|always), or an
# "approval waiting" notice (PARAM_EVENT=approval; tfship sends it only when the retrain verdict
# passed its gates). Never fails the job. If tfship is not installed (the install step failed),
# a minimal message (job, failed step, build URL) is posted with python3's standard library, or
# curl, so that an install failure still notifies.
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
  if [ -n "${PARAM_MENTIONS:-}" ]; then notify_args+=(--mentions "$PARAM_MENTIONS"); fi
  if [ -n "${PARAM_BRANCH_PATTERN:-}" ]; then
    notify_args+=(--branch-pattern "$PARAM_BRANCH_PATTERN")
  fi
}

# post_without_tfship EVENT: tfship is missing, so post a minimal message ourselves: the job,
# the step that failed (installing tfship) and the build URL, as Slack or generic JSON. The
# webhook URL is a secret: it goes to python3 or curl in the environment or on stdin, and no
# error that could quote it is shown. The branch pattern applies (bash's regular expressions).
post_without_tfship() {
  local event="$1" url="${!PARAM_WEBHOOK_ENV:-}"
  local pattern="${PARAM_BRANCH_PATTERN:-${TFSHIP_NOTIFY_BRANCHES:-}}"
  if [ -n "$pattern" ] && ! [[ "${CIRCLE_BRANCH:-}" =~ ^($pattern)$ ]]; then
    echo "notify: branch '${CIRCLE_BRANCH:-}' does not match the branch pattern '$pattern'; nothing sent"
    return 0
  fi
  if [ -z "$url" ]; then
    echo "notify: tfship is not installed and \$$PARAM_WEBHOOK_ENV is not set; nothing sent"
    return 0
  fi
  local body sent=no
  if command -v python3 >/dev/null 2>&1; then
    NOTIFY_EVENT="$event" python3 -c '
import json, os, sys, urllib.request
env = os.environ.get
job, build = env("CIRCLE_JOB") or "job", env("CIRCLE_BUILD_URL")
line = f"tfship {job} {sys.argv[1]}: tfship is not installed (failed step: install tfship)"
if env("PARAM_FORMAT") == "json":
    body = {"event": env("NOTIFY_EVENT"), "job": job, "stage": "install", "message": line,
            "build_url": build, "branch": env("CIRCLE_BRANCH")}
else:
    body = {"text": ":red_circle: " + line + (f"\n<{build}|build>" if build else "")}
request = urllib.request.Request(
    sys.stdin.read().strip(), json.dumps(body).encode(), {"Content-Type": "application/json"})
urllib.request.urlopen(request, timeout=10).close()
' "$(event_word "$event")" <<<"$url" 2>/dev/null && sent=yes
  elif command -v curl >/dev/null 2>&1; then
    body="$(minimal_body "$event" "$(event_word "$event")")"
    # The URL is read from a config file on stdin, never from the command line (ps shows it).
    printf 'url = "%s"\n' "$url" |
      curl -fsS -m 10 -o /dev/null -K - -H 'Content-Type: application/json' --data-binary "$body" \
        2>/dev/null && sent=yes
  fi
  if [ "$sent" = yes ]; then
    echo "notify: tfship is not installed; minimal message sent"
  else
    echo "notify: tfship is not installed; the minimal message could not be sent" \
      "(the job's result stands)"
  fi
}

# event_word EVENT: how the minimal message says it (fail -> failed, pass -> passed).
event_word() {
  case "$1" in fail) echo failed ;; pass) echo passed ;; *) echo "$1" ;; esac
}

# minimal_body EVENT WORD: the JSON for curl, without python3 (only \ and " need escaping here: the
# values are CircleCI's job name, URL and branch).
minimal_body() {
  local job="${CIRCLE_JOB:-job}" build="${CIRCLE_BUILD_URL:-}"
  local line="tfship $job $2: tfship is not installed (failed step: install tfship)"
  line="${line//\\/\\\\}" && line="${line//\"/\\\"}"
  if [ "${PARAM_FORMAT:-slack}" = json ]; then
    printf '{"event":"%s","job":"%s","stage":"install","message":"%s","build_url":"%s"}' \
      "$1" "${job//\"/}" "$line" "${build//\"/}"
  else
    printf '{"text":":red_circle: %s%s"}' "$line" "${build:+\\n<${build//\"/}|build>}"
  fi
}

main() {
  # The on_fail step of the notify command records a failure; no record means the job passed.
  local status="${TFSHIP_JOB_STATUS:-pass}" event
  if ! event="$(event_to_send "$status" "$PARAM_EVENT")"; then
    echo "notify: job status is $status, notifying on $PARAM_EVENT only"
    return 0
  fi
  if ! command -v tfship >/dev/null 2>&1; then
    # Nothing to approve without tfship: only failures and passes get the minimal message.
    if [ "$event" != approval ]; then post_without_tfship "$event"; fi
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
