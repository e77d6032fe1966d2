#!/usr/bin/env bash
# Launch blspkd training on this node: torchrun with one process per GPU (or --nproc_per_node processes on CPU).
#
# Usage:
#   utils/launch_train.sh [--ngpu N] [--nproc_per_node N] [--dry_run] -- <python arguments...>
#   e.g. utils/launch_train.sh --ngpu 8 -- -m blspkd.bin.train --config conf/pretrain.yaml --exp_dir exp/pretrain
#   --dry_run prints the command it would run (one shell line) instead of running it.
#
# Single node: `torchrun --standalone` (1 process on CPU unless --nproc_per_node says otherwise; a lone CPU process is
# started with plain python). Several nodes: the Slurm backend runs this script once per node through srun
# (`${cuda_cmd} --num_nodes N ...`, see utils/run_slurm.py), exporting NNODES, NODE_RANK, MASTER_ADDR and MASTER_PORT;
# every node's torchrun agent then joins one c10d rendezvous at MASTER_ADDR:MASTER_PORT:
#   torchrun --nnodes $NNODES --node_rank $NODE_RANK --rdzv_backend c10d --rdzv_endpoint $MASTER_ADDR:$MASTER_PORT ...
# The same variables can be set by hand for a cluster without Slurm (run the script on each node).
set -euo pipefail

ngpu=0
nproc_per_node=""
dry_run=false
while [ $# -gt 0 ]; do
    case "$1" in
        --dry_run|--dry-run) dry_run=true; shift ;;
        --ngpu|--ngpu=*|--nproc_per_node|--nproc-per-node|--nproc_per_node=*|--nproc-per-node=*)
            if [[ $1 == *=* ]]; then name=${1%%=*}; value=${1#*=}; shift; else name=$1; value=${2:?"$1 needs a value"}; shift 2; fi
            [[ ${value} =~ ^[0-9]+$ ]] || { echo "$0: ${name} must be a non-negative integer, got '${value}'" >&2; exit 1; }
            case "${name}" in --ngpu) ngpu=${value} ;; *) nproc_per_node=${value} ;; esac
            ;;
        --) shift; break ;;
        *) echo "$0: unknown option '$1' (usage: $0 [--ngpu N] [--nproc_per_node N] [--dry_run] -- <python args>)" >&2
           exit 1 ;;
    esac
done
[ $# -gt 0 ] || { echo "$0: nothing to launch after '--' (e.g. -- -m blspkd.bin.train --config ...)" >&2; exit 1; }
if [ -z "${nproc_per_node}" ]; then
    nproc_per_node=$((ngpu > 0 ? ngpu : 1))
fi
[ "${nproc_per_node}" -ge 1 ] || { echo "$0: --nproc_per_node must be at least 1" >&2; exit 1; }
nnodes=${NNODES:-1}

# exec the command, or with --dry_run print it: plain words as they are (so $NODE_RANK-style placeholders read as
# variables), any other word in single quotes.
run() {
    if ! ${dry_run}; then
        exec "$@"
    fi
    local words=() w plain='^[A-Za-z0-9_./:=,+@%$-]+$'
    for w in "$@"; do
        if [[ ${w} =~ ${plain} ]]; then words+=("${w}"); else words+=("'${w//\'/\'\\\'\'}'"); fi
    done
    echo "${words[*]}"
    exit 0
}
say() { ${dry_run} || echo "$@"; }

if [ "${nnodes}" -gt 1 ]; then
    : "${MASTER_ADDR:?NNODES=${nnodes} needs MASTER_ADDR (the first node; set by utils/run_slurm.py --num_nodes)}"
    : "${MASTER_PORT:?NNODES=${nnodes} needs MASTER_PORT (set by utils/run_slurm.py --num_nodes)}"
    node_rank=${NODE_RANK:-${SLURM_PROCID:?NNODES=${nnodes} needs NODE_RANK or SLURM_PROCID}}
    # PET_* defaults exported by run_slurm.py would duplicate the flags below; the flags are the single source here.
    unset PET_NNODES PET_RDZV_BACKEND PET_RDZV_ENDPOINT PET_RDZV_ID PET_NODE_RANK
    say "$(hostname): torchrun node ${node_rank} of ${nnodes}, ${nproc_per_node} process(es), rendezvous ${MASTER_ADDR}:${MASTER_PORT}"
    run python -m torch.distributed.run --nnodes "${nnodes}" --node_rank "${node_rank}" \
        --nproc_per_node "${nproc_per_node}" --rdzv_backend c10d --rdzv_endpoint "${MASTER_ADDR}:${MASTER_PORT}" \
        --rdzv_id "${SLURM_JOB_ID:-blspkd}" "$@"
elif [ "${nproc_per_node}" -gt 1 ]; then
    say "$(hostname): torchrun --standalone, ${nproc_per_node} processes"
    run python -m torch.distributed.run --standalone --nnodes 1 --nproc_per_node "${nproc_per_node}" "$@"
else
    run python "$@"
fi
