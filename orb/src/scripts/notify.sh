#!/usr/bin/env bash
# Send a notification when the job's status matches PARAM_EVENT (fail|pass|always), or an
# "approval waiting" notice (PARAM_EVENT=approval). Never fails the job.
set -uo pipefail

status="${TFSHIP_JOB_STATUS:-pass}"
event="$PARAM_EVENT"
case "$event" in
  always) event="$status" ;;
  approval) if [ "$status" = fail ]; then exit 0; fi ;;
  "$status") ;;
  *) echo "notify: job status is $status, notifying on $event only"; exit 0 ;;
esac

args=(notify --event "$event" --webhook-env "$PARAM_WEBHOOK_ENV" --format "$PARAM_FORMAT")
if [ -n "${PARAM_STAGE:-}" ]; then args+=(--stage "$PARAM_STAGE"); fi
if [ -n "${PARAM_MESSAGE:-}" ]; then args+=(--message "$PARAM_MESSAGE"); fi
if [ -n "${PARAM_EVIDENCE:-}" ]; then args+=(--evidence "$PARAM_EVIDENCE"); fi
cd "${PARAM_APP_DIR:-.}" || exit 0
tfship "${args[@]}" || echo "notify: could not notify (the job's result stands)"
