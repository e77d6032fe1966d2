"""utils/run_local.py (the local backend of cmd.sh) run as a real subprocess, as recipes call it."""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
RUN_LOCAL = REPO / "utils" / "run_local.py"

# Each job records wall-clock start/end so the test can measure how many ran at once.
TIMED_JOB = ('echo start $(date +%s.%N); sleep {sleep}; echo "gpu=${{CUDA_VISIBLE_DEVICES:-none}}"; '
             'echo end $(date +%s.%N)')


def run_local(*args: str, cwd: Path, env: dict | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(RUN_LOCAL), *args], cwd=cwd, capture_output=True, text=True,
                          env=env, timeout=timeout)


def intervals(logs: list[Path]) -> list[tuple[float, float]]:
    out = []
    for log in logs:
        text = log.read_text()
        out.append((float(re.search(r"^start (\S+)", text, re.M).group(1)),
                    float(re.search(r"^end (\S+)", text, re.M).group(1))))
    return out


def max_overlap(spans: list[tuple[float, float]]) -> int:
    events = sorted([(s, 1) for s, _ in spans] + [(e, -1) for _, e in spans])
    best = cur = 0
    for _, d in events:
        cur += d
        best = max(best, cur)
    return best


def test_array_writes_one_log_per_job_with_header_and_footer(tmp_path):
    r = run_local("JOB=1:4", "exp/log/hello.JOB.log", "echo", "hello", "JOB", "|", "tr", "a-z", "A-Z", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stdout == "" and r.stderr == ""
    for j in range(1, 5):
        lines = (tmp_path / f"exp/log/hello.{j}.log").read_text().splitlines()
        assert lines[0] == f"# echo hello {j} | tr a-z A-Z"
        assert lines[1] == f"# Running on {os.uname().nodename}"
        assert lines[2].startswith("# Started at ")
        assert lines[4] == f"HELLO {j}"
        assert re.fullmatch(r"# Accounting: time=\d+ threads=1", lines[5])
        assert re.fullmatch(r"# Ended \(code 0\) at .*, elapsed time \d+ seconds", lines[6])
    assert not (tmp_path / "exp/log/hello.5.log").exists()


def test_single_job_and_quoting(tmp_path):
    r = run_local("--num-threads=3", "log/one.log", "printf", "%s,", "a  b", "it's", "$OMP_NUM_THREADS", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "a  b,it's,3," in (tmp_path / "log/one.log").read_text()


def test_max_jobs_run_is_respected(tmp_path):
    start = time.time()
    r = run_local("--max-jobs-run", "2", "JOB=1:4", "log/t.JOB.log", TIMED_JOB.format(sleep=0.6), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    spans = intervals([tmp_path / f"log/t.{j}.log" for j in range(1, 5)])
    assert max_overlap(spans) == 2
    assert time.time() - start >= 1.2


def test_jobs_run_in_parallel_by_default(tmp_path):
    r = run_local("--max_jobs_run=4", "JOB=1:4", "log/p.JOB.log", TIMED_JOB.format(sleep=1.5), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert max_overlap(intervals([tmp_path / f"log/p.{j}.log" for j in range(1, 5)])) == 4


def test_failing_jobs_are_reported_with_their_log_and_exit_code(tmp_path):
    r = run_local("JOB=1:4", "log/f.JOB.log", "if [ JOB -eq 2 ] || [ JOB -eq 4 ]; then echo boom; exit 3; fi",
                  cwd=tmp_path)
    assert r.returncode == 3
    assert r.stderr.splitlines() == [
        "run_local.py: 2 / 4 failed (JOB=2,4); first failing log is in log/f.2.log",
        "run_local.py:   JOB=2: exit code 3, log log/f.2.log",
        "run_local.py:   JOB=4: exit code 3, log log/f.4.log",
    ]
    text = (tmp_path / "log/f.2.log").read_text()
    assert "boom\n" in text and "# Ended (code 3)" in text
    assert "# Ended (code 0)" in (tmp_path / "log/f.1.log").read_text()


def test_single_failing_job_propagates_its_exit_code(tmp_path):
    r = run_local("log/x.log", "exit 7", cwd=tmp_path)
    assert r.returncode == 7
    assert r.stderr == "run_local.py: job failed (exit code 7), log is in log/x.log\n"


def test_gpus_are_handed_out_from_a_pool(tmp_path):
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="3,5")
    r = run_local("--gpu", "1", "JOB=1:4", "log/g.JOB.log", TIMED_JOB.format(sleep=0.5), cwd=tmp_path, env=env)
    assert r.returncode == 0, r.stderr
    logs = [tmp_path / f"log/g.{j}.log" for j in range(1, 5)]
    spans = intervals(logs)
    gpus = [re.search(r"^gpu=(\S+)", p.read_text(), re.M).group(1) for p in logs]
    assert set(gpus) <= {"3", "5"}
    for i in range(4):
        for k in range(i + 1, 4):
            overlap = min(spans[i][1], spans[k][1]) > max(spans[i][0], spans[k][0])
            assert not (overlap and gpus[i] == gpus[k]), "two concurrent jobs shared a GPU"
    r = run_local("--gpu", "3", "log/g.log", "true", cwd=tmp_path, env=env)
    assert r.returncode == 1
    assert r.stderr == "run_local.py: --gpu 3 requested but only 2 GPU(s) are visible (3,5) (see run_local.py --help)\n"


def test_no_gpu_present_warns_and_runs_on_cpu(tmp_path):
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="")
    r = run_local("--gpu", "1", "log/c.log", "echo ${CUDA_VISIBLE_DEVICES}x", cwd=tmp_path, env=env)
    assert r.returncode == 0
    assert r.stderr == "run_local.py: warning: --gpu 1 requested but no GPU is visible; running on CPU\n"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["JOB=1:2", "log/x.log", "true"],
         "JOB=1:2 runs several jobs but the log file 'log/x.log' does not contain JOB: every job needs its own log "
         "(e.g. exp/log/step.JOB.log)"),
        (["JOB=3:2", "log/x.JOB.log", "true"], "invalid job range JOB=3:2: need JOB=START:END with 1 <= START <= END"),
        (["--max-jobs-run", "0", "log/x.log", "true"], "option --max_jobs_run expects an integer >= 1, got '0'"),
        (["--gpu", "--mem", "2G", "log/x.log", "true"],
         "option --gpu needs a value, got the option '--mem' (missing value?)"),
        (["log/x.log"], "expected a log file and a command after the options"),
        (["--num_nodes", "2", "log/x.log", "true"],
         "--num_nodes > 1 needs the Slurm backend (set cmd_backend=slurm in cmd.sh)"),
    ],
)
def test_usage_errors(tmp_path, args, message):
    r = run_local(*args, cwd=tmp_path)
    assert r.returncode == 1
    assert r.stderr == f"run_local.py: {message} (see run_local.py --help)\n"


def test_cluster_options_are_accepted_and_unknown_ones_warned(tmp_path):
    r = run_local("--mem", "4G", "--time", "1:00:00", "--config", "conf/slurm.conf", "-p", "gpu", "--gpu_limit", "3",
                  "log/o.log", "true", cwd=tmp_path)
    assert r.returncode == 0
    assert r.stderr == "run_local.py: warning: option --gpu_limit means nothing to the local backend; ignored\n"


def test_help():
    r = subprocess.run([sys.executable, str(RUN_LOCAL), "--help"], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0
    assert "Usage:" in r.stdout and "--max_jobs_run N" in r.stdout


def test_ctrl_c_kills_the_running_jobs(tmp_path):
    proc = subprocess.Popen(
        [sys.executable, str(RUN_LOCAL), "--max_jobs_run", "2", "JOB=1:3", "log/s.JOB.log",
         "echo $$ > pid.JOB; exec sleep 60"],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 20
    while not all((tmp_path / f"pid.{j}").exists() and (tmp_path / f"pid.{j}").read_text().strip()
                  for j in (1, 2)):
        assert time.time() < deadline, "jobs did not start"
        time.sleep(0.05)
    pids = [int((tmp_path / f"pid.{j}").read_text()) for j in (1, 2)]
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 130
    assert err == "run_local.py: caught SIGINT: killed 2 running job(s), 1 not started\n"
    for pid in pids:
        assert not Path(f"/proc/{pid}").exists(), f"job process {pid} survived Ctrl-C"
    for j in (1, 2):
        assert "# Ended (code 143)" in (tmp_path / f"log/s.{j}.log").read_text()
    assert not (tmp_path / "log/s.3.log").exists()


def recipe_dir(tmp_path: Path) -> Path:
    """A recipe directory as egs/<corpus>/ looks: cmd.sh, conf/ and a utils link."""
    (tmp_path / "utils").symlink_to(REPO / "utils")
    (tmp_path / "conf").mkdir()
    for name in ("slurm.conf", "slurm_localhost.conf"):
        (tmp_path / "conf" / name).write_text((REPO / "egs/TEMPLATE/conf" / name).read_text())
    (tmp_path / "cmd.sh").write_text((REPO / "egs/TEMPLATE/cmd.sh").read_text())
    return tmp_path


def test_cmd_sh_selects_the_backend(tmp_path):
    recipe_dir(tmp_path)
    show = '. ./cmd.sh && echo "$train_cmd|$cuda_cmd|$decode_cmd"'
    env = {k: v for k, v in os.environ.items() if not k.startswith("BLSPKD_")}
    r = subprocess.run(["bash", "-c", show], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=30)
    assert r.stdout == "utils/run_local.py|utils/run_local.py|utils/run_local.py\n"
    r = subprocess.run(["bash", "-c", show], cwd=tmp_path, env=dict(env, BLSPKD_CMD_BACKEND="slurm"),
                       capture_output=True, text=True, timeout=30)
    assert r.stdout == "|".join(["utils/run_slurm.py --config conf/slurm.conf"] * 3) + "\n"
    r = subprocess.run(["bash", "-c", show], cwd=tmp_path, env=dict(env, BLSPKD_CMD_BACKEND="sge"),
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 1
    assert r.stderr == "cmd.sh: unknown cmd_backend 'sge' (choose local or slurm)\n"


def test_train_cmd_from_a_recipe_script(tmp_path):
    recipe_dir(tmp_path)
    script = "set -euo pipefail\n. ./cmd.sh\n${train_cmd} --num-threads 1 JOB=1:2 exp/log/x.JOB.log echo shard JOB\n"
    env = {k: v for k, v in os.environ.items() if not k.startswith("BLSPKD_")}
    r = subprocess.run(["bash", "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert "\nshard 2\n" in (tmp_path / "exp/log/x.2.log").read_text()


def test_single_job_number_form(tmp_path):
    r = run_local("JOB=3", "log/only.JOB.log", "echo", "JOB", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "\n3\n" in (tmp_path / "log/only.3.log").read_text()
