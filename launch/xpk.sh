#!/usr/bin/env bash
# GKE TPU clusters through XPK (github.com/AI-Hypercomputer/xpk): one workload runs
# `python -m bigvar.main ... --multihost` in every pod of its slices; JAX finds its peers from the
# environment GKE gives TPU pods.
#
#   launch/xpk.sh COMMAND --cluster=CLUSTER [--workload=NAME] [options] [-- bigvar.main flags]
#
# VAR-d16 on one v5e-64 slice of an existing XPK cluster (`xpk cluster create ...`), from an
# image built from this checkout's Dockerfile (once per code change):
#
#   launch/xpk.sh build --docker-image=gcr.io/PROJECT/bigvar:v1
#   launch/xpk.sh create --cluster=my-cluster --workload=var-d16 --tpu-type=v5litepod-64 \
#       --zone=us-west4-a --docker-image=gcr.io/PROJECT/bigvar:v1 -- \
#       --config=configs/var_d16.py --workdir=gs://BUCKET/var_d16 --config.mode=train \
#       --config.data.source=array_record --config.data.path='/mnt/gcs/imagenet/train-*.array_record' \
#       --config.tokenizer_from=gs://BUCKET/ckpt/var_d16
#   launch/xpk.sh list   --cluster=my-cluster --zone=us-west4-a
#   launch/xpk.sh logs   --cluster=my-cluster --workload=var-d16 --zone=us-west4-a
#   launch/xpk.sh delete --cluster=my-cluster --workload=var-d16 --zone=us-west4-a
#
# Commands:
#   build     docker build of the repository's Dockerfile (bigvar installed with --extras, not
#             editable; entry point `python -m bigvar.main`), tagged --docker-image, then
#             docker push. Needs docker, logged in to the registry (`gcloud auth
#             configure-docker`). No --cluster needed.
#   create    xpk workload create. Every pod runs `python -m bigvar.main FLAGS --multihost`. The
#             image: --docker-image (from `build`), which has bigvar installed, so pods start at
#             once; without it, xpk builds one from --base-docker-image and a copy of this
#             checkout's pyproject.toml, README.md, bigvar/ and configs/ (needs docker), and
#             every pod runs `pip install -e ".[tpu,tfds]"` first, at every start. The flags
#             after `--` must include --config and --workdir (a gs:// path: every pod writes
#             there).
#             Restarts: the workload is created with --restart-on-user-code-failure, so a pod
#             that fails (a crash, or bigvar.main's exit status 75 after the checkpoint it saves
#             on a preemption's SIGTERM) makes JobSet restart the whole workload, up to
#             --max-restarts times (each preemption uses one); every restart resumes from the
#             workdir's newest checkpoint. A run that finished exits 0 and is not restarted.
#   list      xpk workload list (only this workload's when --workload is given).
#   logs      kubectl logs of every pod of the workload, each line prefixed by its pod.
#   delete    xpk workload delete.
#
# Options (a default in brackets):
#   --cluster NAME                         the XPK cluster [$CLUSTER_NAME] (not for build)
#   --workload NAME                        the workload (create, logs, delete)
#   --project PROJECT                      [$PROJECT_ID, else gcloud's configured project]
#   --zone ZONE                            [$ZONE, else gcloud's configured zone]
#   --tpu-type TYPE                        e.g. v5litepod-64 (create)
#   --num-slices N                         [1]
#   --docker-image IMAGE                   the image `build` makes and `create` runs, e.g.
#                                          gcr.io/PROJECT/bigvar:TAG (also --image)
#   --extras EXTRAS                        build: the package's extras [tpu,tfds]; NVIDIA
#                                          GPUs: cuda12,tfds
#   --base-docker-image IMAGE              [python:3.12] (create without --docker-image)
#   --max-restarts N                       JobSet restarts after a failure or preemption [10]
#   --termination-grace-period-seconds S   time between SIGTERM and SIGKILL, for the
#                                          trainer's last checkpoint [300]
#   --dry-run                              print every command (`+ ...`, one a line), run none
#   -h, --help                             this text
set -euo pipefail

# shellcheck source=launch/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

REPO=$(cd "$(dirname "$0")/.." && pwd)
CLUSTER=${CLUSTER_NAME:-}
WORKLOAD=""
PROJECT=${PROJECT_ID:-}
ZONE=${ZONE:-}
TPU_TYPE=""
NUM_SLICES=1
DOCKER_IMAGE=""
BASE_DOCKER_IMAGE=python:3.12
EXTRAS=tpu,tfds
MAX_RESTARTS=10
GRACE_SECONDS=300
DRY_RUN=0
COMMAND=""
BIGVAR_FLAGS=()

while (($# > 0)); do
  if [[ $1 == --*=* ]]; then  # --option=value -> --option value
    set -- "${1%%=*}" "${1#*=}" "${@:2}"
  fi
  case $1 in
    -h | --help) usage; exit 0 ;;
    --dry-run) DRY_RUN=1 ;;
    --cluster) CLUSTER=$(value "$@"); shift ;;
    --workload) WORKLOAD=$(value "$@"); shift ;;
    --project) PROJECT=$(value "$@"); shift ;;
    --zone) ZONE=$(value "$@"); shift ;;
    --tpu-type) TPU_TYPE=$(value "$@"); shift ;;
    --num-slices) NUM_SLICES=$(value "$@"); shift ;;
    --docker-image | --image) DOCKER_IMAGE=$(value "$@"); shift ;;
    --extras) EXTRAS=$(value "$@"); shift ;;
    --base-docker-image) BASE_DOCKER_IMAGE=$(value "$@"); shift ;;
    --max-restarts) MAX_RESTARTS=$(value "$@"); shift ;;
    --termination-grace-period-seconds) GRACE_SECONDS=$(value "$@"); shift ;;
    --) shift; BIGVAR_FLAGS=("$@"); break ;;
    build | create | list | logs | delete)
      [[ -z $COMMAND ]] || die "one command at a time (got '$COMMAND' and '$1')"
      COMMAND=$1 ;;
    *) die "unknown argument '$1' (flags for bigvar.main go after '--')" ;;
  esac
  shift
done

[[ -n $COMMAND ]] || die "no command: build, create, list, logs or delete"
if [[ $COMMAND != build ]]; then
  [[ -n $CLUSTER ]] || die "missing --cluster (the XPK cluster's name)"
  if [[ $COMMAND != list && -z $WORKLOAD ]]; then die "$COMMAND needs --workload"; fi
fi
[[ $MAX_RESTARTS =~ ^[0-9]+$ ]] || die "--max-restarts must be a number (0: never restart), got '$MAX_RESTARTS'"
XPK_FLAGS=(--cluster="$CLUSTER")
if [[ -n $PROJECT ]]; then XPK_FLAGS+=(--project="$PROJECT"); fi
if [[ -n $ZONE ]]; then XPK_FLAGS+=(--zone="$ZONE"); fi

cmd_build() {
  [[ -n $DOCKER_IMAGE ]] || die "build needs --docker-image (e.g. --docker-image=gcr.io/PROJECT/bigvar:v1)"
  # linux/amd64: TPU hosts are x86 machines, whatever machine builds the image.
  run_cmd docker build --platform=linux/amd64 --build-arg=EXTRAS="$EXTRAS" -t "$DOCKER_IMAGE" \
    -f "$REPO/Dockerfile" "$REPO"
  run_cmd docker push "$DOCKER_IMAGE"
}

cmd_create() {
  [[ -n $TPU_TYPE ]] || die "create needs --tpu-type (e.g. v5litepod-64)"
  has_flag --config || die "create needs bigvar.main's --config after '--' (e.g. -- --config=configs/var_d16.py --workdir=gs://BUCKET/var_d16)"
  has_flag --workdir || die "create needs bigvar.main's --workdir after '--' (a gs:// path every pod can write)"
  local main="python -m bigvar.main" flag
  for flag in "${BIGVAR_FLAGS[@]}" --multihost; do main+=" $(quote "$flag")"; done
  # `exec`: XPK forwards the pod's SIGTERM to the command's process, which is then the trainer,
  # and the trainer's exit status (75 after a preemption checkpoint) is the command's.
  local image_flags command="exec $main"
  if [[ -n $DOCKER_IMAGE ]]; then
    image_flags=(--docker-image="$DOCKER_IMAGE")
  else
    local script_dir=${TMPDIR:-/tmp}/bigvar-xpk-$WORKLOAD
    run_cmd rm -rf "$script_dir"
    run_cmd mkdir -p "$script_dir"
    run_cmd cp -R "$REPO/pyproject.toml" "$REPO/README.md" "$REPO/bigvar" "$REPO/configs" "$script_dir/"
    image_flags=(--base-docker-image="$BASE_DOCKER_IMAGE" --script-dir="$script_dir")
    command="pip install --quiet -e '.[tpu,tfds]' && $command"
  fi
  run_cmd xpk workload create "${XPK_FLAGS[@]}" --workload="$WORKLOAD" --tpu-type="$TPU_TYPE" \
    --num-slices="$NUM_SLICES" "${image_flags[@]}" --restart-on-user-code-failure \
    --max-restarts="$MAX_RESTARTS" --termination-grace-period-seconds="$GRACE_SECONDS" \
    --command="$command"
}

cmd_list() {
  local list=(xpk workload list "${XPK_FLAGS[@]}")
  if [[ -n $WORKLOAD ]]; then list+=(--filter-by-job="$WORKLOAD"); fi
  run_cmd "${list[@]}"
}

cmd_logs() {
  if [[ -n $ZONE ]]; then  # XPK clusters are regional: the zone without its last part
    local credentials=(gcloud container clusters get-credentials "$CLUSTER" --region="${ZONE%-*}")
    if [[ -n $PROJECT ]]; then credentials+=(--project="$PROJECT"); fi
    run_cmd "${credentials[@]}"
  fi
  run_cmd kubectl logs --selector=jobset.sigs.k8s.io/jobset-name="$WORKLOAD" --container=jax-tpu \
    --prefix --tail=-1 --max-log-requests=1000
}

cmd_delete() {
  run_cmd xpk workload delete "${XPK_FLAGS[@]}" --workload="$WORKLOAD"
}

"cmd_$COMMAND"
