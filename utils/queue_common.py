"""The Kaldi/ESPnet job-command contract shared by run_local.py and run_slurm.py (stdlib only, any python3).

Contract (same for every backend, so recipes switch backends by changing cmd.sh only):

    <cmd> [--gpu N] [--mem M] [--num_threads N] [--time T] [--max_jobs_run N] [--num_nodes N]
          [--config conf/slurm.conf] [--sbatch_args "..."] [-x value ...] [--dry_run]
          [JOB=1:N] <log> <command...>

* Option names accept ``-`` or ``_`` (``--num-threads`` == ``--num_threads``) and ``--opt=value``.
* ``JOB`` (any identifier) is replaced literally by the job number in the log path and in the command (Kaldi run.pl).
* Command words without whitespace or quotes are passed to bash as they are, so escaped ``\\|`` or ``">"`` act as
  shell syntax; other words are quoted (Kaldi's heuristic, with proper quoting). A single word is taken as shell code.
* Every log starts with a header (command, host, start time) and ends with Kaldi run.pl's footer lines
  ``# Accounting: time=S threads=T`` and ``# Ended (code C) at DATE, elapsed time S seconds``.
* If any job fails the call exits non-zero (the first failing job's exit status) and names the failed jobs and the
  first failing log.
"""
from __future__ import annotations

import os
import re
import shlex
import sys
from dataclasses import dataclass, field

# Options every backend understands; a Slurm conf may define more (e.g. gpu_limit), local ignores them with a warning.
STANDARD_OPTIONS = ("gpu", "mem", "num_threads", "time", "max_jobs_run", "num_nodes", "config", "name", "sbatch_args")
INTEGER_OPTIONS = {"gpu": 0, "num_threads": 1, "max_jobs_run": 1, "num_nodes": 1}  # name -> minimum value
# Values that may legitimately start with "--" (raw scheduler flags).
RAW_VALUE_OPTIONS = ("sbatch_args",)

_RANGE_RE = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)=(\d+):(\d+)$")
_SINGLE_RE = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)=(\d+)$")


class UsageError(Exception):
    """A bad command line: printed as one line, exit status 1."""


@dataclass
class JobRequest:
    options: dict[str, str] = field(default_factory=dict)  # normalised names (underscores) -> value
    raw_flags: list[str] = field(default_factory=list)  # single-dash scheduler flags with their values
    dry_run: bool = False
    job_var: str | None = None  # e.g. "JOB" for JOB=1:4
    start: int = 1
    end: int = 1
    log: str = ""
    command_args: list[str] = field(default_factory=list)

    @property
    def is_array(self) -> bool:
        return self.job_var is not None

    @property
    def job_ids(self) -> list[int]:
        return list(range(self.start, self.end + 1))

    def int_option(self, name: str, default: int | None = None) -> int | None:
        return int(self.options[name]) if name in self.options else default

    def log_for(self, job_id: int) -> str:
        return substitute(self.log, self.job_var, job_id)

    def command_for(self, job_id: int) -> str:
        return substitute(join_command(self.command_args), self.job_var, job_id)


def parse_job_args(argv: list[str]) -> JobRequest:
    """Parse the contract's command line; raises UsageError with a message that says how to fix it."""
    req = JobRequest()
    args = list(argv)
    while args:
        arg = args[0]
        if _RANGE_RE.match(arg) or _SINGLE_RE.match(arg):
            if req.job_var is not None:
                raise UsageError(f"two job ranges given ({req.job_var}=... and {arg})")
            m = _RANGE_RE.match(arg)
            if m:
                req.job_var, req.start, req.end = m.group(1), int(m.group(2)), int(m.group(3))
            else:
                m = _SINGLE_RE.match(arg)
                req.job_var, req.start = m.group(1), int(m.group(2))
                req.end = req.start
            if req.start < 1 or req.start > req.end:
                raise UsageError(f"invalid job range {arg}: need {req.job_var}=START:END with 1 <= START <= END")
            args.pop(0)
        elif arg in ("--dry_run", "--dry-run"):
            args.pop(0)
            req.dry_run = True
            if args and args[0] in ("true", "false"):
                req.dry_run = args.pop(0) == "true"
        elif arg.startswith("--dry_run=") or arg.startswith("--dry-run="):
            value = arg.split("=", 1)[1]
            if value not in ("true", "false"):
                raise UsageError(f"{arg}: expected true or false")
            req.dry_run = value == "true"
            args.pop(0)
        elif arg.startswith("--") and len(arg) > 2:
            args.pop(0)
            if "=" in arg:
                name, value = arg[2:].split("=", 1)
            else:
                name = arg[2:]
                if not args:
                    raise UsageError(f"option {arg} needs a value")
                value = args.pop(0)
            name = name.replace("-", "_")
            if not re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", name):
                raise UsageError(f"invalid option {arg}")
            if value.startswith("--") and name not in RAW_VALUE_OPTIONS:
                raise UsageError(f"option {arg} needs a value, got the option '{value}' (missing value?)")
            if name in INTEGER_OPTIONS:
                if not re.match(r"^\d+$", value) or int(value) < INTEGER_OPTIONS[name]:
                    raise UsageError(f"option --{name} expects an integer >= {INTEGER_OPTIONS[name]}, got '{value}'")
            req.options[name] = value
        elif arg.startswith("-") and len(arg) > 1 and arg != "-":
            # Kaldi queue.pl/slurm.pl: single-dash switches go to the scheduler verbatim with one argument.
            args.pop(0)
            if not args:
                raise UsageError(f"scheduler flag {arg} needs a value")
            req.raw_flags += [arg, args.pop(0)]
        else:
            break
    if len(args) < 2:
        raise UsageError("expected a log file and a command after the options")
    req.log, req.command_args = args[0], args[1:]
    if req.is_array and req.end > req.start and req.job_var not in req.log:
        raise UsageError(
            f"{req.job_var}={req.start}:{req.end} runs several jobs but the log file '{req.log}' does not contain "
            f"{req.job_var}: every job needs its own log (e.g. exp/log/step.{req.job_var}.log)"
        )
    return req


def substitute(text: str, job_var: str | None, job_id: int) -> str:
    return text.replace(job_var, str(job_id)) if job_var else text


def join_command(words: list[str]) -> str:
    """Kaldi's heuristic: words without whitespace are shell syntax as they are, others are quoted."""
    if len(words) == 1:
        return words[0]
    return " ".join(w if re.match(r"^[^\s'\"]+$", w) else shlex.quote(w) for w in words)


def job_body(command: str, log: str, num_threads: int | None, shown_command: str | None = None) -> str:
    """Bash code that runs one job with stdout+stderr into ``log``, framed by the Kaldi-style header and footer.

    ``shown_command`` is what the header shows when ``command`` wraps the user's command (e.g. in srun).

    The footer is written even when the job is killed with SIGTERM (Ctrl-C in the local backend, scancel in Slurm):
    a trap (not an ignore, which children would inherit) lets bash wait for the job and then record its status.
    """
    threads = num_threads or 1
    header = "\n".join("# " + line for line in (shown_command or command).splitlines() or [""])
    lines = [
        f"log={shlex.quote(log)}",
        'mkdir -p "$(dirname "$log")"',
        f'{{ printf "%s\\n" {shlex.quote(header)}; echo "# Running on $(hostname)"; '
        'echo "# Started at $(date)"; echo "#"; } > "$log"',
        # From here on bash's own messages (e.g. "Terminated") go to the log too, not to the caller's terminal.
        'exec >> "$log" 2>&1 < /dev/null',
        "trap 'true' TERM INT",
    ]
    if num_threads:
        lines.append(f"export OMP_NUM_THREADS={threads} MKL_NUM_THREADS={threads}")
    lines += [
        "time1=$(date +%s)",
        f"( {command}\n)",
        "ret=$?",
        "time2=$(date +%s)",
        f'echo "# Accounting: time=$((time2 - time1)) threads={threads}"',
        'echo "# Ended (code $ret) at $(date), elapsed time $((time2 - time1)) seconds"',
        "exit $ret",
    ]
    return "\n".join(lines) + "\n"


_ENDED_RE = re.compile(r"^# Ended \(code (-?\d+)\)", re.MULTILINE)


def exit_code_from_log(log: str) -> int | None:
    """The code in the log's footer, or None when the job never wrote one (not started, killed hard)."""
    try:
        with open(log, errors="replace") as f:
            tail = f.read()[-4096:]
    except OSError:
        return None
    m = list(_ENDED_RE.finditer(tail))
    return int(m[-1].group(1)) if m else None


def report_failures(prog: str, req: JobRequest, failed: dict[int, str]) -> None:
    """Print which jobs failed (with their reason) and the first failing log, Kaldi-style, to stderr."""
    ids = sorted(failed)
    first_log = req.log_for(ids[0])
    if req.is_array:
        which = ",".join(str(i) for i in ids)
        print(
            f"{prog}: {len(ids)} / {len(req.job_ids)} failed ({req.job_var}={which}); "
            f"first failing log is in {first_log}",
            file=sys.stderr,
        )
        for i in ids[:10]:
            print(f"{prog}:   {req.job_var}={i}: {failed[i]}, log {req.log_for(i)}", file=sys.stderr)
        if len(ids) > 10:
            print(f"{prog}:   ... and {len(ids) - 10} more", file=sys.stderr)
    else:
        print(f"{prog}: job failed ({failed[ids[0]]}), log is in {first_log}", file=sys.stderr)


def exit_status(code: int) -> int:
    """Map a job's status (negative = killed by a signal) onto a shell exit status that is never 0."""
    if code < 0:
        return 128 + (-code)
    return code if 0 < code < 256 else 1


def cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1
