#!/usr/bin/env python3
"""Run jobs inside the current Slurm allocation: the ${cuda_cmd} of a recipe submitted with utils/submit_recipe.sh.

Usage (the cmd.sh contract):
    utils/run_allocation.py [--gpu N] [--num_nodes N] [--mem M] [--time T] [...] [JOB=1:N] <log> <command...>

One node (--num_nodes 1, the default): exactly utils/run_local.py on the node running the batch script, which hands
each job --gpu N of the allocation's GPUs through CUDA_VISIBLE_DEVICES (e.g. 8 single-GPU decoding jobs).
Several nodes: the command runs once per node as ONE job step of this allocation (srun --ntasks N, one task per node),
with NNODES, NODE_RANK, MASTER_ADDR and MASTER_PORT set as utils/run_slurm.py sets them, so utils/launch_train.sh
joins every node's torchrun agent into one c10d rendezvous. --mem/--time/--gpu are the allocation's business and are
not requested again. It refuses to start outside an allocation, from inside a job step (srun inside srun: the step
would wait forever for resources its parent holds, the ESPnet trap), or with more nodes than the allocation has.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import run_local  # noqa: E402
from queue_common import UsageError, join_command, parse_job_args  # noqa: E402
from run_slurm import multinode_command  # noqa: E402

PROG = "run_allocation.py"


def in_job_step(env: dict[str, str]) -> bool:
    """True inside an srun step; the batch script itself runs in the 'batch' step (or none, by Slurm version)."""
    step = env.get("SLURM_STEP_ID", env.get("SLURM_STEPID", ""))
    return step.isdigit()


def translate(argv: list[str], env: dict[str, str]) -> list[str]:
    """The run_local.py command line that does what ``argv`` asks inside this allocation."""
    req = parse_job_args(argv)
    num_nodes = req.int_option("num_nodes", 1)
    if num_nodes <= 1:
        return [a for a in argv if a not in ("--num_nodes=1", "--num-nodes=1")]
    if "SLURM_JOB_ID" not in env:
        raise UsageError(f"--num_nodes {num_nodes} needs a Slurm allocation (submit with utils/submit_recipe.sh "
                         "--num_nodes N, or use cmd_backend=slurm)")
    if in_job_step(env):
        raise UsageError("called from inside a Slurm job step (srun): a nested srun would wait forever for the "
                         "resources its parent step holds; run the recipe from the batch script "
                         "(utils/submit_recipe.sh)")
    # submit_recipe.sh asks for one task per node, so the task count is the node count (on the one-host test
    # cluster, tasks stand in for nodes).
    have = int(env.get("SLURM_NTASKS") or env.get("SLURM_JOB_NUM_NODES") or 1)
    if num_nodes > have:
        raise UsageError(f"--num_nodes {num_nodes} but this allocation (job {env['SLURM_JOB_ID']}) has {have} "
                         f"node(s); submit with utils/submit_recipe.sh --num_nodes {num_nodes}")
    if req.is_array and req.end > req.start:
        raise UsageError(f"--num_nodes {num_nodes} runs one multi-node job; {req.job_var}={req.start}:{req.end} asks "
                         "for several")
    per_node = [f"--{k}={v}" for k, v in req.options.items()
                if k in ("num_threads", "max_jobs_run")]
    command = multinode_command(join_command(req.command_args), num_nodes)
    job_range = [f"{req.job_var}={req.start}:{req.end}"] if req.is_array else []
    return [*(["--dry_run"] if req.dry_run else []), *per_node, *job_range, req.log, "bash", "-c", command]


def main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__.strip())
        return 0 if argv else 1
    try:
        local_argv = translate(argv, dict(os.environ))
    except UsageError as e:
        print(f"{PROG}: {e}", file=sys.stderr)
        return 1
    return run_local.main(local_argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
