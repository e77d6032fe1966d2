#!/usr/bin/env bash
# Submit a whole recipe, or a stage range of it, as ONE Slurm batch job; run from the recipe directory.
#
# Usage:
#   utils/submit_recipe.sh [--num_nodes N] [--gpus_per_node G] [--cpus_per_task C] [--mem M] [--time T]
#       [--partition P] [--job_name NAME] [--sbatch_args "..."] [--dry_run true] -- ./run.sh [run.sh options]
#   e.g. utils/submit_recipe.sh --num_nodes 2 --gpus_per_node 8 --partition gpu --time 3-00:00:00 \
#            -- ./run.sh --stage 4 --stop_stage 7 --ngpu 8 --num_nodes 2
#        utils/submit_recipe.sh --partition cpu --time 12:00:00 -- ./run.sh --stage 1 --stop_stage 2 --nj 64
#
# The batch job holds the nodes and GPUs asked for here and runs run.sh on its first node with cmd_backend=slurm:
#   * CPU work (${train_cmd}, ${decode_cmd}: features, teacher data, decoding, scoring) goes to separate job arrays
#     through utils/run_slurm.py and conf/slurm.conf, as with an interactive run;
#   * GPU work (${cuda_cmd}: training, GPU decoding) runs INSIDE this allocation through utils/run_allocation.py:
#     on one node as local processes on the allocated GPUs, on several nodes as one srun step with a torchrun agent
#     per node. The batch script is not itself an srun step, so that srun is never nested in another (the ESPnet trap
#     of `srun ./run.sh`, where inner steps wait forever for resources the outer step holds).
# Give run.sh the same --ngpu/--num_nodes as --gpus_per_node/--num_nodes here. The job's own log is
# exp/submit/<job name>.<job id>.log; the driver script is exp/submit/<job name>.sh (printed with --dry_run true).
set -euo pipefail

num_nodes=1
gpus_per_node=0
cpus_per_task=4
mem=""
time=""
partition=""
job_name=""
sbatch_args=""
dry_run=false

help_message=$(sed -n '2,21p' "$0" | sed 's/^# \{0,1\}//')
run_args=()
opts=()
while [ $# -gt 0 ]; do
    if [ "$1" = -- ]; then shift; run_args=("$@"); break; fi
    opts+=("$1"); shift
done
set -- "${opts[@]+"${opts[@]}"}"
# shellcheck disable=SC1091
. "$(dirname "$0")/parse_options.sh"
[ $# -eq 0 ] || { echo "submit_recipe.sh: unexpected argument '$1' before '--' (see --help)" >&2; exit 1; }
[ ${#run_args[@]} -gt 0 ] || { echo "submit_recipe.sh: nothing to submit: give the recipe command after '--'," \
    "e.g. -- ./run.sh --stage 1 --stop_stage 2" >&2; exit 1; }
for n in num_nodes gpus_per_node cpus_per_task; do
    [[ ${!n} =~ ^[0-9]+$ ]] || { echo "submit_recipe.sh: --${n} must be a non-negative integer, got '${!n}'" >&2; exit 1; }
done
[ "${num_nodes}" -ge 1 ] || { echo "submit_recipe.sh: --num_nodes must be at least 1" >&2; exit 1; }
[ -x "${run_args[0]}" ] || [ -n "$(command -v "${run_args[0]}")" ] || { echo "submit_recipe.sh: ${run_args[0]} is" \
    "not an executable in $(pwd); run this from the recipe directory (egs/<corpus>)" >&2; exit 1; }
[ -f cmd.sh ] || { echo "submit_recipe.sh: no cmd.sh in $(pwd); run this from the recipe directory" >&2; exit 1; }

recipe=$(pwd)
job_name=${job_name:-blspkd_$(basename "${recipe}")}
mkdir -p exp/submit
script=exp/submit/${job_name}.sh

sbatch_cmd=(sbatch --parsable --job-name "${job_name}" --nodes "${num_nodes}" --ntasks-per-node 1
            --cpus-per-task "${cpus_per_task}" --output "${recipe}/exp/submit/${job_name}.%j.log")
[ "${gpus_per_node}" -gt 0 ] && sbatch_cmd+=(--gres "gpu:${gpus_per_node}")
[ -n "${mem}" ] && sbatch_cmd+=(--mem "${mem}")
[ -n "${time}" ] && sbatch_cmd+=(--time "${time}")
[ -n "${partition}" ] && sbatch_cmd+=(--partition "${partition}")
# shellcheck disable=SC2206
[ -n "${sbatch_args}" ] && sbatch_cmd+=(${sbatch_args})
sbatch_cmd+=("${script}")

{
    echo "#!/usr/bin/env bash"
    echo "# Written by utils/submit_recipe.sh on $(date '+%Y-%m-%dT%H:%M:%S'); submitted with:"
    printf '#  '; printf ' %q' "${sbatch_cmd[@]}"; echo
    echo "set -euo pipefail"
    printf 'cd %q\n' "${recipe}"
    echo "# CPU stages: job arrays (run_slurm.py); GPU stages: this allocation (run_allocation.py)."
    echo "export BLSPKD_CMD_BACKEND=slurm BLSPKD_CUDA_CMD=utils/run_allocation.py"
    echo 'echo "$(date "+%Y-%m-%dT%H:%M:%S") job ${SLURM_JOB_ID}: ${SLURM_JOB_NUM_NODES:-1} node(s) ${SLURM_JOB_NODELIST:-}, running on $(hostname)"'
    printf 'exec'; printf ' %q' "${run_args[@]}"; echo
} > "${script}"
chmod +x "${script}"

if ${dry_run}; then
    printf '%q ' "${sbatch_cmd[@]}"; echo
    cat "${script}"
    exit 0
fi
command -v sbatch > /dev/null || { echo "submit_recipe.sh: sbatch not found: this needs a Slurm cluster" \
    "(or run ${run_args[*]} directly)" >&2; exit 1; }
job_id=$("${sbatch_cmd[@]}")
job_id=${job_id%%;*}
echo "submitted job ${job_id}: ${run_args[*]}"
echo "log: ${recipe}/exp/submit/${job_name}.${job_id}.log   (squeue -j ${job_id}; scancel ${job_id} stops it)"
