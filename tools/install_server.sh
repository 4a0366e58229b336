#!/usr/bin/env bash
# Set up a TensorFlow Serving host that `tfship deploy` can ship to (run on the host, as root).
#
#   tools/install_server.sh --model-name digits --deploy-user deploy [--base-path /models]
#                           [--image tensorflow/serving:2.21.0] [--rest-port 8501]
#                           [--grpc-port 8500] [--poll-seconds 1] [--tunnel] [--dry-run]
#   tools/install_server.sh --model-name digits --base-path s3://bucket/models --image IMAGE
#                           [--s3-endpoint http://host:9000] [--aws-region R]
#                           [--s3-verify-ssl 0|1] [ports, --poll-seconds, --tunnel, --dry-run
#                           as above]
#
# It creates <base-path>/<model> owned by the deploy user (tfship uploads there over SSH and
# renames finished versions into place), and starts the official TF Serving image with that
# folder bind-mounted at /models/<model>. Server flags go AFTER the image name: the image's
# entrypoint passes them on to tensorflow_model_server. TF Serving is never restarted by
# deploys; it polls the folder every --poll-seconds and swaps versions without downtime.
# Bucket mode (--base-path s3://...): nothing is created on the host; the server polls
# s3://.../<model> with TF Serving's S3 variables (S3_ENDPOINT with its scheme, AWS_REGION,
# S3_VERIFY_SSL). Stock TF Serving >= 2.7 cannot read s3:// (tensorflow/serving#1963): --image
# must be a build that includes tensorflow-io's S3 file system. AWS_ACCESS_KEY_ID,
# AWS_SECRET_ACCESS_KEY and AWS_SESSION_TOKEN are handed to the container by name from this
# shell's environment when set (never on a command line); unset: the instance role applies.
# --tunnel publishes TF Serving's ports on this host's 127.0.0.1 only: nothing is open to the
# network, and tfship reaches them through its SSH connection (--serving-tunnel,
# TFSHIP_SERVING_TUNNEL=true; TF_SERVING_URL, if set, is then the address as seen from here).
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
tunnel=false
s3_endpoint=""
aws_region=""
s3_verify_ssl=""

usage() { sed -n '2,25p' "$0" | sed 's/^# \{0,1\}//'; }
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
    --s3-endpoint) s3_endpoint="${2:?}"; shift 2 ;;
    --aws-region) aws_region="${2:?}"; shift 2 ;;
    --s3-verify-ssl) s3_verify_ssl="${2:?}"; shift 2 ;;
    --tunnel) tunnel=true; shift ;;
    --dry-run) dry_run=true; shift ;;
    -h|--help) usage; exit 0 ;;
    *) die "unknown option $1 (see --help)" ;;
  esac
done

[[ "$model" =~ ^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$ ]] || die "model name '$model' is not allowed"
bucket_mode=false
if [[ "$base" == s3://* ]]; then
  bucket_mode=true
  base="${base%/}"
  [[ "$base" =~ ^s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9](/[^[:space:]]*)?$ ]] \
    || die "--base-path '$base' is not s3://bucket[/prefix]"
  [[ ! "$image" =~ ^(docker\.io/)?tensorflow/serving(:|@|$) ]] \
    || die "stock TF Serving images cannot read s3:// (tensorflow/serving#1963): pass --image" \
      "with a build that includes tensorflow-io's S3 file system"
  [ -z "$deploy_user" ] || die "--deploy-user is for a folder on this host; a bucket's writers" \
    "are set by its policy"
  [ -z "$s3_endpoint" ] || [[ "$s3_endpoint" =~ ^https?://[^/[:space:]]+/?$ ]] \
    || die "--s3-endpoint must be http://host:port or https://host:port (TF Serving's S3 file" \
      "system reads no S3_USE_HTTPS: the scheme is part of S3_ENDPOINT)"
  [[ "$s3_verify_ssl" =~ ^[01]?$ ]] || die "--s3-verify-ssl must be 0 or 1"
else
  [ -z "$s3_endpoint$aws_region$s3_verify_ssl" ] \
    || die "--s3-endpoint, --aws-region and --s3-verify-ssl need an s3:// --base-path"
  [[ "$base" == /* ]] || die "--base-path must be absolute or s3://, got '$base'"
fi
[[ "$rest_port" =~ ^[0-9]+$ && "$grpc_port" =~ ^[0-9]+$ ]] || die "ports must be numbers"
[[ "$poll" =~ ^[0-9]+$ ]] || die "--poll-seconds must be a whole number"
container="${container:-tfserving-$model}"
# Where the ports are published: every interface, or (--tunnel) loopback only, which docker
# writes as -p 127.0.0.1:HOST:CONTAINER.
publish=""
where="$(hostname -f 2>/dev/null || hostname)"
if $tunnel; then
  publish="127.0.0.1:"
  where="127.0.0.1"
fi

run() {
  if $dry_run; then printf '+'; printf ' %q' "$@"; printf '\n'; else "$@"; fi
}

if ! $dry_run; then
  command -v docker >/dev/null || die "docker not found: install Docker Engine first"
  $bucket_mode || [ "$(id -u)" -eq 0 ] \
    || die "run as root (it creates $base and starts a container)"
fi

if ! $bucket_mode; then
  run mkdir -p "$base/$model"
  if [ -n "$deploy_user" ]; then
    run chown "$deploy_user" "$base/$model"
  fi
fi

if ! $dry_run && docker container inspect "$container" >/dev/null 2>&1; then
  echo "container $container exists already; remove it first to change its settings:" >&2
  echo "  docker rm -f $container" >&2
  exit 0
fi

if $bucket_mode; then
  # The image's entrypoint serves $MODEL_BASE_PATH/$MODEL_NAME. Credentials go by name
  # (docker copies the value from this environment): never on a command line or in a log.
  storage=(-e "MODEL_BASE_PATH=$base")
  [ -z "$s3_endpoint" ] || storage+=(-e "S3_ENDPOINT=${s3_endpoint%/}")
  [ -z "$aws_region" ] || storage+=(-e "AWS_REGION=$aws_region")
  [ -z "$s3_verify_ssl" ] || storage+=(-e "S3_VERIFY_SSL=$s3_verify_ssl")
  for name in AWS_ACCESS_KEY_ID AWS_SECRET_ACCESS_KEY AWS_SESSION_TOKEN; do
    [ -z "${!name:-}" ] || storage+=(-e "$name")
  done
else
  storage=(--mount "type=bind,source=$base/$model,target=/models/$model")
fi

run docker run -d --name "$container" --restart unless-stopped \
  -p "$publish$rest_port:8501" -p "$publish$grpc_port:8500" \
  "${storage[@]}" \
  -e "MODEL_NAME=$model" \
  "$image" \
  "--file_system_poll_wait_seconds=$poll"

tunnel_note() {
  $tunnel || return 0
  cat <<MSG
Ports are on 127.0.0.1 only (--tunnel): run tfship with --serving-tunnel
(TFSHIP_SERVING_TUNNEL=true) so deploy, status and test-deployed reach them over SSH.
MSG
}

if $bucket_mode; then
  region_text="${aws_region:-the AWS SDK default (AWS_DEFAULT_REGION, AWS_REGION, ~/.aws/config)}"
  cat <<MSG
TF Serving for '$model' is set up, reading a bucket.
  versions        : $base/$model/<number>/   (saved_model.pb written last)
  S3_ENDPOINT     : ${s3_endpoint:-(AWS S3)}
  AWS_REGION      : $region_text
  credentials     : AWS_* variables of this shell if set, else the instance role
  REST            : http://$where:$rest_port/v1/models/$model
  gRPC            : port $grpc_port
The image must include tensorflow-io's S3 file system; without it the log says
"File system scheme 's3' not implemented". The same settings run the local stand-in:
  S3_ENDPOINT=... tfship serve --model_name $model --model_base_path $base/$model
Until the first version is in the bucket its ports stay closed (connection refused).
MSG
  tunnel_note
  exit 0
fi

cat <<MSG
TF Serving for '$model' is set up.
  versions folder : $base/$model   (DEPLOY_SERVER_PATH=$base)
  REST            : http://$where:$rest_port/v1/models/$model
  gRPC            : port $grpc_port
Until the first \`tfship deploy\` its ports stay closed (connection refused): TF Serving
opens them only once every model has a version AVAILABLE. The first deploy waits for that.
MSG
tunnel_note
