#!/usr/bin/env bash
# Run one tfship stage. Orb parameters arrive as PARAM_* variables and are handed to
# tfship as its own environment variables (see `tfship <stage> --help`).
set -euo pipefail

set_if() { if [ -n "${2:-}" ]; then export "$1=$2"; fi; }
set_if TFSHIP_WORKSPACE "${PARAM_WORKSPACE:-}"
set_if MODEL_NAME "${PARAM_MODEL_NAME:-}"
set_if TFSHIP_DATA "${PARAM_DATA:-}"
set_if TFSHIP_EPOCHS "${PARAM_EPOCHS:-}"
set_if TFSHIP_MIN_ACCURACY "${PARAM_MIN_ACCURACY:-}"
set_if TF_SERVING_URL "${PARAM_SERVING_URL:-}"
set_if TFSHIP_SSH_KEY_ENV "${PARAM_SSH_KEY_ENV:-}"

if [ -n "${PARAM_KNOWN_HOSTS_ENV:-}" ] && [ -n "${!PARAM_KNOWN_HOSTS_ENV:-}" ]; then
  known_hosts="$(mktemp)"
  printf '%s\n' "${!PARAM_KNOWN_HOSTS_ENV}" > "$known_hosts"
  export DEPLOY_SERVER_KNOWN_HOSTS="$known_hosts"
fi

cd "${PARAM_APP_DIR:-.}"
read -r -a extra <<< "${PARAM_EXTRA_ARGS:-}"
echo "tfship ${PARAM_STAGE} ${extra[*]}"
tfship "$PARAM_STAGE" "${extra[@]}"
