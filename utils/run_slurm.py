#!/usr/bin/env python3
"""Run jobs as a Slurm job array (the slurm backend of cmd.sh; ESPnet/Kaldi slurm.pl semantics and conf grammar).

Usage:
    utils/run_slurm.py [--config conf/slurm.conf] [--gpu N] [--mem M] [--num_threads N] [--time T]
                       [--max_jobs_run N] [--num_nodes N] [--name NAME] [--<conf option> V ...]
                       [-x value ...] [--sbatch_args "..."] [--dry_run] [JOB=1:N] <log> <command...>
    utils/run_slurm.py --config conf/slurm.conf --mem 2G JOB=1:4 exp/log/hello.JOB.log echo hello JOB

What it does: writes a job script to <log dir>/q/<log name>.sh, submits it with ONE sbatch call as an array
(--array=START-END%max_jobs_run; a job without JOB=... is a one-task array), waits by polling `squeue -h -j ID`, reads
each task's exit code from `scontrol show job ID` (and from the log's "# Ended (code C)" footer when Slurm has
forgotten the job), and exits like the local backend: 0, or the first failing task's status after naming the failed
tasks and the first failing log. Ctrl-C / SIGTERM runs `scancel ID` and waits for the tasks to go.
Each task sources ./path.sh when it exists (the conf usually exports only PATH) and writes the same log header and
footer as utils/run_local.py. Slurm's own output for a task (normally empty) goes to <log dir>/q/<name>.<task>.out.

The conf (--config, default conf/slurm.conf, a built-in ESPnet-like default when that file is absent) uses ESPnet's
grammar, so an existing ESPnet conf/slurm.conf works unchanged:
    command sbatch --export=PATH          the submit command and fixed flags (required)
    option mem=* --mem-per-cpu $0         a command-line option; $0 is replaced by its value
    option mem=0                          a special value and its flags (here none)
    option gpu=* -p gpu --gres=gpu:$0     special values win over the * rule
    default gpu=0                         the value used when the option is not given
    # comments and blank lines are ignored
An option given on the command line that the conf does not define is an error (a typo never silently drops a resource
request). --config and --max_jobs_run are handled here and need no conf line.
Extra sbatch flags: single-dash flags pass through with their value (-p debug, -A proj, -C a100; Kaldi style), and
--sbatch_args "--qos=high --exclusive" passes any list of flags.
--dry_run (or --dry_run true) prints the exact sbatch command and the job script, and submits nothing.

Multi-node (one process per node, e.g. one torchrun agent per node): --num_nodes N needs a conf line for num_nodes
(e.g. "option num_nodes=* --nodes $0 --ntasks-per-node 1"; on the one-host test cluster "--ntasks $0"). The task then
runs `srun --export=ALL --ntasks=N --kill-on-bad-exit=1` so the command runs once per node, with these variables set:
    NNODES=N, NODE_RANK=$SLURM_PROCID, MASTER_ADDR=<first node>, MASTER_PORT=<20000 + job id % 20000>,
    and torchrun's own environment defaults PET_NNODES, PET_RDZV_BACKEND=c10d,
    PET_RDZV_ENDPOINT=$MASTER_ADDR:$MASTER_PORT, PET_RDZV_ID=$SLURM_JOB_ID.
So a training step is launched exactly like on one machine:
    ${cuda_cmd} --num_nodes 2 --gpu 8 exp/train/log/train.log torchrun --nproc_per_node 8 -m blspkd.bin.train ...
and torchrun forms one c10d rendezvous over all nodes (use '$NODE_RANK' in single quotes to read the rank yourself).
"""
from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from queue_common import (
    JobRequest,
    UsageError,
    exit_code_from_log,
    exit_status,
    job_body,
    parse_job_args,
    report_failures,
)

PROG = "run_slurm.py"
DEFAULT_CONF_PATH = "conf/slurm.conf"
BUILTIN_CONF = """\
command sbatch --export=PATH
option name=* --job-name $0
option time=* --time $0
option mem=* --mem-per-cpu $0
option mem=0
option num_threads=* --cpus-per-task $0
option num_threads=1 --cpus-per-task 1
option num_nodes=* --nodes $0 --ntasks-per-node 1
default gpu=0
option gpu=0
option gpu=* --gres=gpu:$0 -c $0
"""
# Options this script handles itself; they need no conf line.
OWN_OPTIONS = ("config", "max_jobs_run", "sbatch_args")
POLL_FIRST_S, POLL_MAX_S, POLL_GROWTH = 0.25, 10.0, 1.3
CANCEL_WAIT_S = 60.0


class Interrupted(Exception):
    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


@dataclass
class SlurmConf:
    """A parsed ESPnet-style slurm.conf."""

    path: str
    command: list[str] = field(default_factory=list)
    wildcard: dict[str, tuple[int, list[str]]] = field(default_factory=dict)  # name -> (line, flag template)
    special: dict[tuple[str, str], tuple[int, list[str]]] = field(default_factory=dict)  # (name, value) -> ...
    defaults: dict[str, str] = field(default_factory=dict)

    def defines(self, name: str) -> bool:
        return name in self.wildcard or any(n == name for n, _ in self.special)

    def flags_for(self, options: dict[str, str]) -> list[str]:
        """sbatch flags for the given options plus the conf's defaults, in the conf's line order."""
        values = dict(self.defaults)
        values.update({k: v for k, v in options.items() if k not in OWN_OPTIONS})
        chosen: list[tuple[int, list[str]]] = []
        for name, value in values.items():
            if (name, value) in self.special:
                chosen.append(self.special[(name, value)])
            elif name in self.wildcard:
                line, template = self.wildcard[name]
                chosen.append((line, [t.replace("$0", value) for t in template]))
            elif self.defines(name):
                allowed = sorted(v for n, v in self.special if n == name)
                raise UsageError(f"option --{name} {value}: {self.path} only allows the values {', '.join(allowed)} "
                                 f"(add a line 'option {name}=* <sbatch flags with $0>' to allow any value)")
            else:
                raise UsageError(f"option --{name} is not defined in {self.path} (add a line like "
                                 f"'option {name}=* --sbatch-flag $0' to it, or drop the option)")
        return [flag for _, flags in sorted(chosen, key=lambda c: c[0]) for flag in flags]


_COMMAND_RE = re.compile(r"^command\s+(.+)$")
_WILDCARD_RE = re.compile(r"^option\s+([A-Za-z_][A-Za-z0-9_]*)=\*(?:\s+(.*))?$")
_SPECIAL_RE = re.compile(r"^option\s+([A-Za-z_][A-Za-z0-9_]*)=(\S+)(?:\s+(.*))?$")
_DEFAULT_RE = re.compile(r"^default\s+([A-Za-z_][A-Za-z0-9_]*)=(\S+)$")


def parse_conf(text: str, path: str) -> SlurmConf:
    conf = SlurmConf(path=path)
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = re.sub(r"\s*#.*", "", raw).strip()
        if not line:
            continue
        try:
            if m := _COMMAND_RE.match(line):
                conf.command = shlex.split(m.group(1))
            elif m := _WILDCARD_RE.match(line):
                conf.wildcard[m.group(1)] = (lineno, shlex.split(m.group(2) or ""))
            elif m := _SPECIAL_RE.match(line):
                conf.special[(m.group(1), m.group(2))] = (lineno, shlex.split(m.group(3) or ""))
            elif m := _DEFAULT_RE.match(line):
                conf.defaults[m.group(1)] = m.group(2)
            else:
                raise ValueError("expected 'command ...', 'option name=* flags', 'option name=value flags' "
                                 "or 'default name=value'")
        except ValueError as e:  # also shlex's "No closing quotation"
            raise UsageError(f"{path}:{lineno}: cannot parse '{raw.strip()}': {e}") from None
    if not conf.command:
        raise UsageError(f"{path}: no 'command ...' line (e.g. 'command sbatch --export=PATH')")
    return conf


def load_conf(req: JobRequest) -> SlurmConf:
    path = req.options.get("config")
    if path is None and not os.path.exists(DEFAULT_CONF_PATH):
        return parse_conf(BUILTIN_CONF, "the built-in default conf (no conf/slurm.conf here)")
    path = path or DEFAULT_CONF_PATH
    try:
        text = Path(path).read_text()
    except OSError as e:
        raise UsageError(f"cannot read the Slurm conf {path} given with --config: {e.strerror}") from None
    return parse_conf(text, path)


def queue_paths(req: JobRequest) -> tuple[Path, str]:
    """(q dir, base name): Kaldi puts scheduler files next to the logs in <log dir>/q, named after the log sans JOB."""
    log = Path(req.log)
    base = log.name.replace(f".{req.job_var}", "").replace(req.job_var, "") if req.is_array else log.name
    base = re.sub(r"\.[A-Za-z]{1,5}$", "", base) or "job"
    return (Path.cwd() / log.parent / "q").resolve(), base


def multinode_command(command: str, num_nodes: int) -> str:
    """Run ``command`` once per node through srun, with the rendezvous variables torchrun reads."""
    # Not PET_NODE_RANK: torchrun warns that c10d ignores it (the rendezvous assigns node ranks).
    per_node = "export NODE_RANK=$SLURM_PROCID\n" + command
    return (
        'export MASTER_ADDR=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)\n'
        "export MASTER_PORT=$((20000 + SLURM_JOB_ID % 20000))\n"
        f"export NNODES={num_nodes} PET_NNODES={num_nodes} PET_RDZV_BACKEND=c10d "
        'PET_RDZV_ENDPOINT="$MASTER_ADDR:$MASTER_PORT" PET_RDZV_ID=$SLURM_JOB_ID\n'
        f"srun --export=ALL --ntasks={num_nodes} --kill-on-bad-exit=1 bash -c {shlex.quote(per_node)}"
    )


def job_script(req: JobRequest, submit_line: str) -> str:
    threads = req.int_option("num_threads")
    num_nodes = req.int_option("num_nodes", 1)
    lines = [
        "#!/usr/bin/env bash",
        f"# Written by utils/{PROG}; submitted with:",
        f"#   {submit_line}",
        f"cd {shlex.quote(os.getcwd())}",
        "if [ -f ./path.sh ]; then . ./path.sh; fi",
        'case "${SLURM_ARRAY_TASK_ID:-}" in',
    ]
    for job_id in req.job_ids:
        command = req.command_for(job_id)
        run_command = multinode_command(command, num_nodes) if num_nodes > 1 else command
        lines += [f"{job_id})", job_body(run_command, req.log_for(job_id), threads, command).rstrip("\n"), ";;"]
    lines += [f'*) echo "{PROG}: unexpected SLURM_ARRAY_TASK_ID \'${{SLURM_ARRAY_TASK_ID:-}}\'" >&2; exit 1 ;;',
              "esac", ""]
    return "\n".join(lines)


def sbatch_command(req: JobRequest, conf: SlurmConf, qdir: Path, base: str) -> list[str]:
    array = f"{req.start}-{req.end}"
    if "max_jobs_run" in req.options:
        array += f"%{req.options['max_jobs_run']}"
    return [
        *conf.command, "--parsable", f"--job-name={base}",  # conf flags and raw flags below may override the name
        *conf.flags_for(req.options),
        *req.raw_flags,
        *shlex.split(req.options.get("sbatch_args", "")),
        f"--array={array}", f"--output={qdir}/{base}.%a.out",
        str(qdir / f"{base}.sh"),
    ]


def run(cmd: list[str], timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


def wait_for(job_id: str) -> None:
    """Poll squeue until no task of the array is pending or running (sbatch --wait polls far too slowly)."""
    delay, warned = POLL_FIRST_S, False
    while True:
        try:
            r = run(["squeue", "-h", "-j", job_id, "-o", "%i"])
        except subprocess.TimeoutExpired:
            r = None
        if r is not None and r.returncode == 0 and not r.stdout.strip():
            return
        if r is not None and "Invalid job id" in r.stderr:
            return  # already finished and purged
        if r is None or r.returncode != 0:
            if not warned:
                msg = "timed out" if r is None else r.stderr.strip()
                print(f"{PROG}: warning: squeue failed ({msg}); retrying", file=sys.stderr)
                warned = True
        time.sleep(delay)
        delay = min(POLL_MAX_S, delay * POLL_GROWTH)


def task_states(job_id: str) -> dict[int, tuple[str, int, int]]:
    """ArrayTaskId -> (JobState, exit code, signal) from `scontrol show job -o` (empty if Slurm forgot the job)."""
    r = run(["scontrol", "show", "job", "-o", job_id])
    states = {}
    for line in r.stdout.splitlines():
        fields = dict(kv.split("=", 1) for kv in line.split() if "=" in kv)
        if "ArrayTaskId" not in fields or not fields["ArrayTaskId"].isdigit():
            continue
        code, _, sig = fields.get("ExitCode", "0:0").partition(":")
        states[int(fields["ArrayTaskId"])] = (fields.get("JobState", "UNKNOWN"), int(code), int(sig or 0))
    return states


def collect_failures(req: JobRequest, job_id: str, qdir: Path, base: str) -> tuple[dict[int, str], int]:
    states = task_states(job_id)
    failed: dict[int, str] = {}
    first_code = 0
    for task in req.job_ids:
        log_code = exit_code_from_log(req.log_for(task))
        state, code, sig = states.get(task, ("UNKNOWN", -1, 0))
        if state == "COMPLETED" and (log_code in (None, 0)):
            continue
        if state == "UNKNOWN" and log_code == 0:
            continue
        if state in ("FAILED", "COMPLETED") or (state == "UNKNOWN" and log_code is not None):
            code = log_code if log_code is not None else code
            reason = f"exit code {code}"
        else:  # CANCELLED, TIMEOUT, OUT_OF_MEMORY, NODE_FAIL, ...
            code = 128 + sig if sig else 1
            reason = f"Slurm state {state}"
        if log_code is None:
            reason += f", no exit status in its log (see {qdir}/{base}.{task}.out)"
        failed[task] = reason
        first_code = first_code or exit_status(code)
    return failed, first_code


def cancel(job_id: str) -> None:
    run(["scancel", job_id])
    deadline = time.time() + CANCEL_WAIT_S
    while time.time() < deadline:
        r = run(["squeue", "-h", "-j", job_id, "-o", "%i"])
        if r.returncode != 0 or not r.stdout.strip():
            return
        time.sleep(0.2)
    print(f"{PROG}: warning: job {job_id} still listed by squeue {CANCEL_WAIT_S:.0f} s after scancel",
          file=sys.stderr)


def submit_and_wait(req: JobRequest) -> int:
    conf = load_conf(req)
    qdir, base = queue_paths(req)
    cmd = sbatch_command(req, conf, qdir, base)
    script = job_script(req, shlex.join(cmd))
    if req.dry_run:
        print(f"# sbatch command (dry run, nothing submitted):\n{shlex.join(cmd)}")
        print(f"# job script {qdir / (base + '.sh')}:\n{script}", end="")
        return 0
    qdir.mkdir(parents=True, exist_ok=True)
    (qdir / f"{base}.sh").write_text(script)
    for task in req.job_ids:  # a stale footer must never pass for this run's result
        Path(req.log_for(task)).unlink(missing_ok=True)
        Path(req.log_for(task)).parent.mkdir(parents=True, exist_ok=True)
    job_id = None
    try:
        r = run(cmd)
        if r.returncode != 0:
            print(f"{PROG}: sbatch failed (exit {r.returncode}): {r.stderr.strip()}\n"
                  f"{PROG}: command: {shlex.join(cmd)}", file=sys.stderr)
            return 1
        job_id = r.stdout.strip().split(";")[0]
        start = time.time()
        wait_for(job_id)
    except Interrupted as e:
        if job_id is not None:
            cancel(job_id)
            print(f"{PROG}: caught {signal.Signals(e.signum).name}: cancelled Slurm job {job_id}", file=sys.stderr)
        return 128 + e.signum
    failed, first_code = collect_failures(req, job_id, qdir, base)
    if failed:
        print(f"{PROG}: Slurm job {job_id} finished after {time.time() - start:.0f} s with failures", file=sys.stderr)
        report_failures(PROG, req, failed)
        return first_code
    return 0


def main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__.strip())
        return 0 if argv else 1

    def on_signal(signum, _frame):
        raise Interrupted(signum)

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    try:
        return submit_and_wait(parse_job_args(argv))
    except UsageError as e:
        print(f"{PROG}: {e} (see {PROG} --help)", file=sys.stderr)
        return 1
    except Interrupted as e:  # before anything was submitted
        return 128 + e.signum


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
