#!/usr/bin/env bash
# Set up a TensorFlow Serving host that `tfship deploy` can ship to (run on the host, as root).
#
#   tools/install_server.sh --model-name digits --deploy-user deploy [--base-path /models]
#                           [--image tensorflow/serving:2.21.0] [--rest-port 8501]
#                           [--grpc-port 8500] [--poll-seconds 1] [--dry-run]
#
# It creates <base-path>/<model> owned by the deploy user (tfship uploads there over SSH and
# renames finished versions into place), and starts the official TF Serving image with that
# folder bind-mounted at /models/<model>. Server flags go AFTER the image name: the image's
# entrypoint passes them on to tensorflow_model_server. TF Serving is never restarted by
# deploys; it polls the folder every --poll-seconds and swaps versions without downtime.
set -euo pipefail

model="${MODEL_NAME:-digits}"
base="/models"
# Match the TF version that exported the model: older servers may lack its ops.
image="tensorflow/serving:2.21.0"
rest_port=8501
grpc_port=8500
poll=1
deploy_user=""
container=""
dry_run=false

usage() { sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'; }
die() { echo "install_server.sh: $*" >&2; exit 2; }

while [ $# -gt 0 ]; do
  case "$1" in
    --model-name) model="${2:?}"; shift 2 ;;
    --base-path) base="${2:?}"; shift 2 ;;
    --image) image="${2:?}"; shift 2 ;;
    --rest-port) rest_port="${2:?}"; shift 2 ;;
    --grpc-port) grpc_port="${2:?}"; shift 2 ;;
    --poll-seconds) poll="${2:?}"; shift 2 ;;
    --deploy-user) deploy_user="${2:?}"; shift 2 ;;
    --container-name) container="${2:?}"; shift 2 ;;
    --dry-run) dry_run=true; shift ;;
    -h|--help) usage; exit 0 ;;
    *) die "unknown option $1 (see --help)" ;;
  esac
done

[[ "$model" =~ ^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$ ]] || die "model name '$model' is not allowed"
[[ "$base" == /* ]] || die "--base-path must be absolute, got '$base'"
[[ "$rest_port" =~ ^[0-9]+$ && "$grpc_port" =~ ^[0-9]+$ ]] || die "ports must be numbers"
[[ "$poll" =~ ^[0-9]+$ ]] || die "--poll-seconds must be a whole number"
container="${container:-tfserving-$model}"

run() {
  if $dry_run; then printf '+'; printf ' %q' "$@"; printf '\n'; else "$@"; fi
}

if ! $dry_run; then
  command -v docker >/dev/null || die "docker not found: install Docker Engine first"
  [ "$(id -u)" -eq 0 ] || die "run as root (it creates $base and starts a container)"
fi

run mkdir -p "$base/$model"
if [ -n "$deploy_user" ]; then
  run chown "$deploy_user" "$base/$model"
fi

if ! $dry_run && docker container inspect "$container" >/dev/null 2>&1; then
  echo "container $container exists already; remove it first to change its settings:" >&2
  echo "  docker rm -f $container" >&2
  exit 0
fi

run docker run -d --name "$container" --restart unless-stopped \
  -p "$rest_port:8501" -p "$grpc_port:8500" \
  --mount "type=bind,source=$base/$model,target=/models/$model" \
  -e "MODEL_NAME=$model" \
  "$image" \
  "--file_system_poll_wait_seconds=$poll"

cat <<MSG
TF Serving for '$model' is set up.
  versions folder : $base/$model   (DEPLOY_SERVER_PATH=$base)
  REST            : http://$(hostname -f 2>/dev/null || hostname):$rest_port/v1/models/$model
  gRPC            : port $grpc_port
Until the first \`tfship deploy\` its ports stay closed (connection refused): TF Serving
opens them only once every model has a version AVAILABLE. The first deploy waits for that.
MSG
