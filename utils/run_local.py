#!/usr/bin/env python3
"""Run jobs as parallel processes on this machine (the local backend of cmd.sh; Kaldi run.pl semantics).

Usage:
    utils/run_local.py [--gpu N] [--num_threads N] [--max_jobs_run N] [--mem M] [--time T] [--config F]
                       [JOB=1:N] <log> <command...>
    utils/run_local.py JOB=1:4 exp/log/hello.JOB.log echo hello JOB

Options:
    --max_jobs_run N  at most N jobs at a time (default: the number of CPU cores available)
    --gpu N           give each job N GPUs through CUDA_VISIBLE_DEVICES, taken from a pool of this machine's GPUs
                      (CUDA_VISIBLE_DEVICES if set, else `nvidia-smi -L`), so concurrent jobs never share a GPU; with
                      no GPU present the option is ignored with a warning (the CPU mini recipe still runs)
    --num_threads N   exports OMP_NUM_THREADS=MKL_NUM_THREADS=N to each job
    --mem, --time, --num_nodes (1 only), --config, --name, --sbatch_args, -x value: cluster settings, accepted so that
                      recipes run unchanged on either backend, and ignored here
The options accept --num-threads as well as --num_threads, and --opt=value.
Each job's log starts with the command, host and start time and ends with "# Ended (code C) ...".
Exit status: 0 if all jobs succeeded, else the first failing job's status; the failed jobs and the first failing log
are printed to stderr. Ctrl-C or SIGTERM kills the running jobs (their logs record the signal) and exits 130/143.
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time

from queue_common import (
    STANDARD_OPTIONS,
    JobRequest,
    UsageError,
    cpu_count,
    exit_status,
    job_body,
    parse_job_args,
    report_failures,
)

PROG = "run_local.py"
KILL_GRACE_S = 5.0


class Interrupted(Exception):
    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


def available_gpus() -> list[str]:
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return [g for g in visible.split(",") if g.strip() and g.strip() != "-1"]
    if shutil.which("nvidia-smi") is None:
        return []
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [str(i) for i, line in enumerate(out.splitlines()) if line.startswith("GPU ")]


def kill_group(proc: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        pass


def run_jobs(req: JobRequest) -> int:
    for name in req.options:
        if name not in STANDARD_OPTIONS:
            print(f"{PROG}: warning: option --{name} means nothing to the local backend; ignored", file=sys.stderr)
    if req.int_option("num_nodes", 1) > 1:
        raise UsageError("--num_nodes > 1 needs the Slurm backend (set cmd_backend=slurm in cmd.sh)")
    max_jobs = req.int_option("max_jobs_run", cpu_count())
    gpus_per_job = req.int_option("gpu", 0)
    gpu_pool: list[str] = []
    if gpus_per_job > 0:
        gpu_pool = available_gpus()
        if not gpu_pool:
            print(f"{PROG}: warning: --gpu {gpus_per_job} requested but no GPU is visible; running on CPU",
                  file=sys.stderr)
            gpus_per_job = 0
        elif gpus_per_job > len(gpu_pool):
            raise UsageError(f"--gpu {gpus_per_job} requested but only {len(gpu_pool)} GPU(s) are visible "
                             f"({','.join(gpu_pool)})")
    threads = req.int_option("num_threads")

    pending = list(req.job_ids)
    running: dict[int, tuple[subprocess.Popen, list[str]]] = {}
    failed: dict[int, str] = {}
    first_code = 0
    try:
        while pending or running:
            while pending and len(running) < max_jobs and len(gpu_pool) >= gpus_per_job:
                job_id = pending.pop(0)
                gpus, gpu_pool = gpu_pool[:gpus_per_job], gpu_pool[gpus_per_job:]
                env = dict(os.environ)
                if gpus_per_job:
                    env["CUDA_VISIBLE_DEVICES"] = ",".join(gpus)
                script = job_body(req.command_for(job_id), req.log_for(job_id), threads)
                # A session of its own: the terminal's Ctrl-C reaches only us, and we kill the whole job tree.
                proc = subprocess.Popen(["bash", "-c", script], env=env, start_new_session=True)
                running[job_id] = (proc, gpus)
            for job_id, (proc, gpus) in list(running.items()):
                code = proc.poll()
                if code is None:
                    continue
                del running[job_id]
                gpu_pool += gpus
                if code != 0:
                    failed[job_id] = f"exit code {code}" if code > 0 else f"killed by signal {-code}"
                    first_code = first_code or exit_status(code)
            time.sleep(0.05)
    except Interrupted as e:
        for proc, _ in running.values():
            kill_group(proc, signal.SIGTERM)
        deadline = time.time() + KILL_GRACE_S
        for proc, _ in running.values():
            try:
                proc.wait(max(0.0, deadline - time.time()))
            except subprocess.TimeoutExpired:
                kill_group(proc, signal.SIGKILL)
                proc.wait()
        name = signal.Signals(e.signum).name
        print(f"{PROG}: caught {name}: killed {len(running)} running job(s), {len(pending)} not started",
              file=sys.stderr)
        return 128 + e.signum
    if failed:
        report_failures(PROG, req, failed)
        return first_code
    return 0


def main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__.strip())
        return 0 if argv else 1
    try:
        req = parse_job_args(argv)
        if req.dry_run:
            threads = req.int_option("num_threads")
            for job_id in req.job_ids:
                body = job_body(req.command_for(job_id), req.log_for(job_id), threads)
                print(f"# job {job_id}: bash -c\n{body}")
            return 0

        def on_signal(signum, _frame):
            raise Interrupted(signum)

        signal.signal(signal.SIGINT, on_signal)
        signal.signal(signal.SIGTERM, on_signal)
        return run_jobs(req)
    except UsageError as e:
        print(f"{PROG}: {e} (see {PROG} --help)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
