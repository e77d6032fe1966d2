# shellcheck shell=bash
# Job backends of a recipe: sourced by run.sh / blspkd.sh, which call ${train_cmd}, ${cuda_cmd} and ${decode_cmd}.
#
# Usage of the commands (Kaldi/ESPnet contract, identical for every backend):
#   ${train_cmd} [--gpu N] [--mem M] [--num_threads N] [--time T] [--max_jobs_run N] [--num_nodes N] \
#                [JOB=1:N] <log> <command...>
#   e.g. ${decode_cmd} JOB=1:4 exp/decode/log/decode.JOB.log python -m blspkd.bin.decode --shard JOB ...
#   "JOB" is replaced by the job number in the log name and the command. If any job fails, the call fails and prints
#   the failed jobs and the first failing log. Options accept --num-threads or --num_threads, and --opt=value.
#
# Select the backend with one variable (or export BLSPKD_CMD_BACKEND=slurm without editing this file):
#   local: parallel processes on this machine (utils/run_local.py); --max_jobs_run defaults to the number of cores,
#          --gpu N hands each job N GPUs of this machine through CUDA_VISIBLE_DEVICES; --mem/--time are ignored.
#   slurm: sbatch job arrays (utils/run_slurm.py) configured by conf/slurm.conf, whose grammar is ESPnet's, so an
#          existing ESPnet conf/slurm.conf works unchanged:
#            command sbatch --export=PATH         the submit command and its fixed flags
#            option mem=* --mem-per-cpu $0        --mem 4G becomes --mem-per-cpu 4G
#            option gpu=0 -p cpu                  a special value (its own flags, possibly none)
#            default gpu=0                        the value used when the option is not given
#          An option the conf does not define is an error. Extra sbatch flags: single-dash flags pass through
#          (-p debug, -A myproject) and --sbatch_args "--qos=high --exclusive" adds any others.
#          --dry_run prints the sbatch command and the job script without submitting.
#          --num_nodes N (multi-node training) runs the command once per node through srun; see utils/run_slurm.py.
#          conf/slurm_localhost.conf fits the single-host cluster of tools/slurm_localhost.sh (tests, CI).
cmd_backend=${BLSPKD_CMD_BACKEND:-local}

case "${cmd_backend}" in
  local)
    export train_cmd="utils/run_local.py"
    export cuda_cmd="utils/run_local.py"
    export decode_cmd="utils/run_local.py"
    ;;
  slurm)
    slurm_conf=${BLSPKD_SLURM_CONF:-conf/slurm.conf}
    export train_cmd="utils/run_slurm.py --config ${slurm_conf}"
    # utils/submit_recipe.sh sets BLSPKD_CUDA_CMD=utils/run_allocation.py: GPU jobs then use the batch job's own
    # allocation (no srun nested in srun) while CPU jobs still go to job arrays.
    export cuda_cmd="${BLSPKD_CUDA_CMD:-utils/run_slurm.py --config ${slurm_conf}}"
    export decode_cmd="utils/run_slurm.py --config ${slurm_conf}"
    ;;
  *)
    echo "cmd.sh: unknown cmd_backend '${cmd_backend}' (choose local or slurm)" >&2
    return 1 2>/dev/null || exit 1
    ;;
esac
