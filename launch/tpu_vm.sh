#!/usr/bin/env bash
# Cloud TPU VM slices: create one, copy this checkout to every worker, install, run the same
# `python -m bigvar.main ... --multihost` on every worker, collect the logs, stop, delete.
#
#   launch/tpu_vm.sh COMMAND --name=NAME --zone=ZONE [options] [-- bigvar.main flags]
#
# VAR-d16 on a v5e-64 slice (16 hosts x 4 chips), spot capacity, workdir on Cloud Storage:
#
#   T="--name=var-d16 --zone=us-west4-a --accelerator-type=v5litepod-64"
#   launch/tpu_vm.sh create  $T --spot      # queued resource; waits until it is ACTIVE
#   launch/tpu_vm.sh copy    $T             # pyproject.toml, README.md, bigvar/, configs/
#   launch/tpu_vm.sh install $T             # ~/bigvar-venv with pip install -e ".[tpu,tfds]"
#   launch/tpu_vm.sh mount   $T --bucket=BUCKET  # gs://BUCKET at /mnt/gcs, read-only
#   launch/tpu_vm.sh run     $T -- --config=configs/var_d16.py --workdir=gs://BUCKET/var_d16 \
#       --config.mode=train --config.data.source=array_record \
#       --config.data.path='/mnt/gcs/imagenet/train-*.array_record' --config.tokenizer_from=gs://BUCKET/ckpt/var_d16
#   launch/tpu_vm.sh logs    $T             # -> logs/var-d16/worker-0.log ... worker-15.log
#   launch/tpu_vm.sh stop    $T             # SIGTERM: the trainer checkpoints and exits
#   launch/tpu_vm.sh delete  $T --spot
#
# Restarts: a SIGTERM to the trainer on any worker makes every worker's trainer save the same
# checkpoint and exit with status 75; `run` starts them again, and the job resumes from it (so a
# SIGTERM that leaves the VMs up costs only the restart; `stop` is how to end a run). A preempted
# spot slice takes its processes with it: recreate it (delete, create, copy, install, mount) and
# repeat the same `run`, which resumes from the workdir's newest checkpoint.
#
# Commands:
#   create    gcloud compute tpus tpu-vm create; with --spot, a queued resource with --spot
#             (gcloud compute tpus queued-resources create), polled until ACTIVE.
#   copy      the checkout's pyproject.toml, README.md, bigvar/ and configs/ (uncommitted edits
#             included) as a tarball to ~/bigvar on every worker, replacing what was there.
#   install   on every worker: a venv ~/bigvar-venv (Python >= 3.11; uv provides 3.12 where the
#             image's python3 is older) and pip install -e "~/bigvar[tpu,tfds]".
#   mount     on every worker: gs://BUCKET (--bucket; BUCKET/DIR mounts one directory of it) at
#             --mount-point with Cloud Storage FUSE (gcsfuse --implicit-dirs, installed from
#             Google's apt repository if missing), read-only unless --read-write: data paths
#             such as /mnt/gcs/imagenet/train-*.array_record then work on every host. Once per
#             VM (a mount does not survive a reboot); an existing mount is left as it is.
#   run       on every worker (--worker=all), in the background, immune to the ssh hang-up:
#               cd ~/bigvar && ~/bigvar-venv/bin/python -m bigvar.main FLAGS --multihost
#             again and again while it exits with 75 (stopped by SIGTERM after saving a
#             checkpoint), until it ends otherwise or `stop` stopped it.
#             stdout and stderr appended to ~/bigvar-logs/RUN.log (RUN: the workdir's last
#             component, or --run-name); ~/bigvar-logs/latest.log links to it. The flags after
#             `--` must include --config and --workdir; use a gs:// workdir, every host writes
#             there. Rerunning the same command resumes from the workdir's last checkpoint.
#   logs      each worker's ~/bigvar-logs/RUN.log (default: latest) to logs/NAME/worker-I.log.
#   stop      on every worker: a stop file, so that `run` does not start the trainer again, then
#             pkill -TERM -f bigvar.main (it checkpoints and exits).
#   delete    gcloud compute tpus tpu-vm delete; with --spot, the queued resource (--force).
#
# Options (a default in brackets; environment variables as in the Cloud TPU docs):
#   --name NAME                the TPU (and queued resource) name [$TPU_NAME]
#   --zone ZONE                e.g. us-west4-a [$ZONE]
#   --project PROJECT          [$PROJECT_ID, else gcloud's configured project]
#   --accelerator-type TYPE    e.g. v5litepod-64, v6e-16, v4-32 [$ACCELERATOR_TYPE]
#   --version RUNTIME          TPU software version, e.g. v2-alpha-tpuv5-lite [$RUNTIME_VERSION,
#                              else derived from the accelerator type]
#   --spot                     create/delete spot capacity through a queued resource
#   --workers N                hosts in the slice, for `logs` [derived from the accelerator type]
#   --run-name RUN             the log file name on the workers [run: the workdir's last
#                              component; logs: latest]
#   --bucket BUCKET            mount: the bucket, e.g. my-bucket, gs://my-bucket/imagenet
#   --mount-point DIR          mount: where on every worker [/mnt/gcs]
#   --read-write               mount: writable (default: read-only, for datasets)
#   --dry-run                  print every command (`+ ...`, one a line) and run none
#   -h, --help                 this text
set -euo pipefail

# shellcheck source=launch/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

REPO=$(cd "$(dirname "$0")/.." && pwd)
NAME=${TPU_NAME:-}
ZONE=${ZONE:-}
PROJECT=${PROJECT_ID:-}
ACCELERATOR_TYPE=${ACCELERATOR_TYPE:-}
VERSION=${RUNTIME_VERSION:-}
SPOT=0
WORKERS=""
RUN_NAME=""
BUCKET=""
MOUNT_POINT=/mnt/gcs
READ_WRITE=0
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
    --spot) SPOT=1 ;;
    --read-write) READ_WRITE=1 ;;
    --name) NAME=$(value "$@"); shift ;;
    --zone) ZONE=$(value "$@"); shift ;;
    --project) PROJECT=$(value "$@"); shift ;;
    --accelerator-type) ACCELERATOR_TYPE=$(value "$@"); shift ;;
    --version) VERSION=$(value "$@"); shift ;;
    --workers) WORKERS=$(value "$@"); shift ;;
    --run-name) RUN_NAME=$(value "$@"); shift ;;
    --bucket) BUCKET=$(value "$@"); shift ;;
    --mount-point) MOUNT_POINT=$(value "$@"); shift ;;
    --) shift; BIGVAR_FLAGS=("$@"); break ;;
    create | copy | install | mount | run | logs | stop | delete)
      [[ -z $COMMAND ]] || die "one command at a time (got '$COMMAND' and '$1')"
      COMMAND=$1 ;;
    *) die "unknown argument '$1' (flags for bigvar.main go after '--')" ;;
  esac
  shift
done

[[ -n $COMMAND ]] || die "no command: create, copy, install, mount, run, logs, stop or delete"
[[ -n $NAME ]] || die "missing --name (the TPU's name)"
[[ -n $ZONE ]] || die "missing --zone (e.g. --zone=us-west4-a)"
GCLOUD_FLAGS=(--zone="$ZONE")
if [[ -n $PROJECT ]]; then GCLOUD_FLAGS+=(--project="$PROJECT"); fi
# The trainer's command line on a worker, for pgrep/pkill -f: anchored at `python`, so that it
# does not match the shell that runs an ssh command line containing this pattern.
TRAINER='^[^ ]*python[^ ]* -m bigvar[.]main'
# Written by `stop`, removed by `run`: a trainer that exits 75 is started again unless it is there.
STOP_FILE=bigvar-logs/stop

on_all_workers() {  # runs the shell command $1 on every worker of the slice
  run_cmd gcloud compute tpus tpu-vm ssh "$NAME" "${GCLOUD_FLAGS[@]}" --worker=all --command="$1"
}

default_version() {  # the TPU VM runtime for an accelerator type (Cloud TPU docs)
  case $1 in
    v5litepod-*) echo v2-alpha-tpuv5-lite ;;
    v5p-*) echo v2-alpha-tpuv5 ;;
    v6e-*) echo v2-alpha-tpuv6e ;;
    v2-* | v3-* | v4-*) echo tpu-ubuntu2204-base ;;
  esac
}

hosts_of() {  # hosts in a slice: v5e/v6e name chips (4 a host, up to 8 on one); v2-v5p cores (8 a host)
  local size=${1##*-}
  [[ $size =~ ^[0-9]+$ ]] || return 0
  case $1 in
    v5litepod-* | v6e-*) echo $((size <= 8 ? 1 : size / 4)) ;;
    v2-* | v3-* | v4-* | v5p-*) echo $((size <= 8 ? 1 : size / 8)) ;;
  esac
}

flag_value() {  # the value of bigvar.main flag $1 (--flag=value or --flag value) in BIGVAR_FLAGS
  local i
  for ((i = 0; i < ${#BIGVAR_FLAGS[@]}; i++)); do
    case ${BIGVAR_FLAGS[i]} in
      "$1="*) echo "${BIGVAR_FLAGS[i]#*=}"; return ;;
      "$1") echo "${BIGVAR_FLAGS[i + 1]:-}"; return ;;
    esac
  done
}

cmd_create() {
  [[ -n $ACCELERATOR_TYPE ]] || die "create needs --accelerator-type (e.g. v5litepod-64)"
  VERSION=${VERSION:-$(default_version "$ACCELERATOR_TYPE")}
  [[ -n $VERSION ]] || die "no default runtime for '$ACCELERATOR_TYPE': pass --version"
  if ((!SPOT)); then
    run_cmd gcloud compute tpus tpu-vm create "$NAME" "${GCLOUD_FLAGS[@]}" \
      --accelerator-type="$ACCELERATOR_TYPE" --version="$VERSION"
    return
  fi
  run_cmd gcloud compute tpus queued-resources create "$NAME" "${GCLOUD_FLAGS[@]}" \
    --node-id="$NAME" --accelerator-type="$ACCELERATOR_TYPE" --runtime-version="$VERSION" --spot
  local describe=(gcloud compute tpus queued-resources describe "$NAME" "${GCLOUD_FLAGS[@]}"
    --format='value(state.state)')
  if ((DRY_RUN)); then
    run_cmd "${describe[@]}"
    echo "# (repeated every 30 s until the state is ACTIVE)"
    return
  fi
  local state
  while state=$("${describe[@]}") && [[ $state != ACTIVE ]]; do
    case $state in
      FAILED | SUSPENDED) echo "tpu_vm.sh: queued resource $NAME is $state" >&2; exit 1 ;;
    esac
    echo "queued resource $NAME: ${state:-?}; waiting for ACTIVE" >&2
    sleep 30
  done
}

cmd_copy() {
  local tarball=${TMPDIR:-/tmp}/bigvar-$NAME.tar.gz
  run_cmd tar -czf "$tarball" -C "$REPO" --exclude=__pycache__ pyproject.toml README.md bigvar configs
  run_cmd gcloud compute tpus tpu-vm scp "$tarball" "$NAME:bigvar.tar.gz" "${GCLOUD_FLAGS[@]}" \
    --worker=all
  on_all_workers "rm -rf bigvar && mkdir bigvar && tar -xzf bigvar.tar.gz -C bigvar && rm bigvar.tar.gz"
}

cmd_install() {
  # TPU VM images have Ubuntu 22.04's Python 3.10 and bigvar needs >= 3.11: there, uv gets 3.12.
  local venv="python3 -m venv bigvar-venv"
  local venv_uv="python3 -m pip install --user --quiet uv && ~/.local/bin/uv venv --seed --python=3.12 bigvar-venv"
  on_all_workers "set -e; \
if [ ! -x bigvar-venv/bin/python ]; then \
if python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then $venv; else $venv_uv; fi; fi; \
bigvar-venv/bin/pip install --quiet --upgrade pip; \
bigvar-venv/bin/pip install -e './bigvar[tpu,tfds]'"
}

cmd_mount() {
  [[ -n $BUCKET ]] || die "mount needs --bucket (e.g. --bucket=my-bucket or --bucket=gs://my-bucket/imagenet)"
  local bucket=${BUCKET#gs://} only_dir="" options="--implicit-dirs"
  bucket=${bucket%/}
  local source="gs://$bucket"
  if [[ $bucket == */* ]]; then  # BUCKET/DIR: that directory only
    only_dir=" --only-dir=$(quote "${bucket#*/}")"
    bucket=${bucket%%/*}
  fi
  if ((!READ_WRITE)); then options+=" -o ro"; fi
  local mp
  mp=$(quote "$MOUNT_POINT")
  # gcsfuse from Google's apt repository (the Cloud Storage FUSE install instructions).
  local install="echo \"deb [signed-by=/usr/share/keyrings/cloud.google.asc] \
https://packages.cloud.google.com/apt gcsfuse-\$(lsb_release -c -s) main\" \
| sudo tee /etc/apt/sources.list.d/gcsfuse.list >/dev/null; \
curl -fsSL https://packages.cloud.google.com/apt/doc/apt-key.gpg \
| sudo tee /usr/share/keyrings/cloud.google.asc >/dev/null; \
sudo apt-get update -qq; sudo apt-get install -y -qq gcsfuse"
  on_all_workers "set -e; if mountpoint -q $mp; then \
echo \"\$(hostname): $mp is already mounted\"; exit 0; fi; \
if ! command -v gcsfuse >/dev/null; then $install; fi; \
sudo mkdir -p $mp; sudo chown \"\$(id -u):\$(id -g)\" $mp; \
gcsfuse $options$only_dir $(quote "$bucket") $mp; \
echo \"\$(hostname): $source mounted at $mp\""
}

cmd_run() {
  local config workdir flags="" flag
  config=$(flag_value --config)
  workdir=$(flag_value --workdir)
  [[ -n $config ]] || die "run needs bigvar.main's --config after '--' (e.g. -- --config=configs/var_d16.py --workdir=gs://BUCKET/var_d16)"
  [[ -n $workdir ]] || die "run needs bigvar.main's --workdir after '--' (a gs:// path every host can write)"
  if [[ $workdir != gs://* ]]; then
    echo "tpu_vm.sh: warning: --workdir=$workdir is not on gs://; every host must see the same directory" >&2
  fi
  local run_name=${RUN_NAME:-$(basename "$workdir")}
  local log="bigvar-logs/$run_name.log"
  for flag in "${BIGVAR_FLAGS[@]}" --multihost; do flags+=" $(quote "$flag")"; done
  # A background subshell, deaf to the ssh session's SIGHUP as under nohup (the trainer inherits
  # that), runs the trainer again while it exits 75 (a checkpoint on SIGTERM) and `stop` did not.
  on_all_workers "set -e; if pgrep -f '$TRAINER' >/dev/null; then \
echo \"\$(hostname): bigvar.main is already running (launch/tpu_vm.sh stop)\" >&2; exit 1; fi; \
mkdir -p bigvar-logs; rm -f $STOP_FILE; ln -sfn $(quote "$run_name.log") bigvar-logs/latest.log; \
cd bigvar; (trap '' HUP; while :; do status=0; \
../bigvar-venv/bin/python -m bigvar.main$flags || status=\$?; \
if [ \$status -ne 75 ] || [ -e ../$STOP_FILE ]; then exit \$status; fi; \
echo \"\$(date): bigvar.main exited with 75 (checkpoint saved): starting it again\"; \
done) >> ../$(quote "$log") 2>&1 < /dev/null & \
echo \"\$(hostname): started bigvar.main, pid \$!, log ~/$log\""
  if ((!DRY_RUN)); then
    echo "started on every worker; follow worker 0 with:" >&2
    echo "  gcloud compute tpus tpu-vm ssh $NAME ${GCLOUD_FLAGS[*]} --worker=0 --command='tail -f $log'" >&2
  fi
}

cmd_logs() {
  local workers=${WORKERS:-$(hosts_of "$ACCELERATOR_TYPE")} i
  [[ -n $workers ]] || die "logs needs --workers N (or --accelerator-type, e.g. v5litepod-64)"
  [[ $workers =~ ^[1-9][0-9]*$ ]] || die "--workers must be a positive number, got '$workers'"
  local log="bigvar-logs/${RUN_NAME:-latest}.log"
  run_cmd mkdir -p "logs/$NAME"
  for ((i = 0; i < workers; i++)); do
    run_cmd gcloud compute tpus tpu-vm scp "$NAME:$log" "logs/$NAME/worker-$i.log" \
      "${GCLOUD_FLAGS[@]}" --worker="$i"
  done
}

cmd_stop() {
  # Every stop file first: a SIGTERM on one worker stops the trainers of all of them.
  on_all_workers "mkdir -p bigvar-logs && touch $STOP_FILE"
  on_all_workers "pkill -TERM -f '$TRAINER' || echo \"\$(hostname): bigvar.main was not running\""
}

cmd_delete() {
  if ((SPOT)); then
    run_cmd gcloud compute tpus queued-resources delete "$NAME" "${GCLOUD_FLAGS[@]}" --force --quiet
  else
    run_cmd gcloud compute tpus tpu-vm delete "$NAME" "${GCLOUD_FLAGS[@]}" --quiet
  fi
}

"cmd_$COMMAND"
