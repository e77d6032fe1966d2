"""utils/run_slurm.py: conf grammar (pure Python) and real submissions to the localhost Slurm cluster."""
from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
UTILS = REPO / "utils"
RUN_SLURM = UTILS / "run_slurm.py"
TEMPLATE_CONF = REPO / "egs/TEMPLATE/conf/slurm.conf"

sys.path.insert(0, str(UTILS))
import run_slurm  # noqa: E402
from queue_common import UsageError  # noqa: E402

# ESPnet's conf grammar as its recipes use it, including lines without flags and special values.
ESPNET_STYLE_CONF = """\
# Default configuration
command sbatch --export=PATH
option name=* --job-name $0
option time=* --time $0
option mem=* --mem-per-cpu $0
option mem=0
option num_threads=* --cpus-per-task $0
option num_threads=1 --cpus-per-task 1
option num_nodes=* --nodes $0
default gpu=0
option gpu=0 -p cpu
option gpu=* -p gpu --gres=gpu:$0 -c $0  # one CPU per GPU
default gpu_limit=200
option gpu_limit=*
"""


def flags(conf_text: str, **options: str) -> list[str]:
    return run_slurm.parse_conf(conf_text, "conf/slurm.conf").flags_for(options)


def test_conf_defaults_special_values_and_wildcards():
    assert flags(ESPNET_STYLE_CONF) == ["-p", "cpu"]
    assert flags(ESPNET_STYLE_CONF, mem="0") == ["-p", "cpu"]
    assert flags(ESPNET_STYLE_CONF, mem="4G", gpu="2") == ["--mem-per-cpu", "4G", "-p", "gpu", "--gres=gpu:2", "-c",
                                                           "2"]
    assert flags(ESPNET_STYLE_CONF, num_threads="1", time="1:00:00", name="x") == [
        "--job-name", "x", "--time", "1:00:00", "--cpus-per-task", "1", "-p", "cpu"]
    assert flags(ESPNET_STYLE_CONF, gpu_limit="10", num_nodes="2") == ["--nodes", "2", "-p", "cpu"]
    # max_jobs_run, config and sbatch_args are the script's own and need no conf line
    assert flags(ESPNET_STYLE_CONF, max_jobs_run="3", config="x", sbatch_args="--qos=a") == ["-p", "cpu"]


def test_conf_unknown_option_and_disallowed_value():
    with pytest.raises(UsageError) as e:
        flags(ESPNET_STYLE_CONF, gpus="1")
    assert str(e.value) == ("option --gpus is not defined in conf/slurm.conf (add a line like "
                            "'option gpus=* --sbatch-flag $0' to it, or drop the option)")
    with pytest.raises(UsageError) as e:
        flags("command sbatch\noption gpu=0\noption gpu=1 --gres=gpu:1\n", gpu="2")
    assert str(e.value) == ("option --gpu 2: conf/slurm.conf only allows the values 0, 1 "
                            "(add a line 'option gpu=* <sbatch flags with $0>' to allow any value)")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("command sbatch\nopton mem=* --mem $0\n",
         "conf/slurm.conf:2: cannot parse 'opton mem=* --mem $0': expected 'command ...', 'option name=* flags', "
         "'option name=value flags' or 'default name=value'"),
        ("command sbatch\noption mem=* --comment 'a $0\n",
         "conf/slurm.conf:2: cannot parse 'option mem=* --comment 'a $0': No closing quotation"),
        ("# nothing\noption mem=* --mem $0\n",
         "conf/slurm.conf: no 'command ...' line (e.g. 'command sbatch --export=PATH')"),
    ],
)
def test_conf_parse_errors_name_file_and_line(text, message):
    with pytest.raises(UsageError) as e:
        run_slurm.parse_conf(text, "conf/slurm.conf")
    assert str(e.value) == message


def run(*args: str, cwd: Path, env: dict | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(RUN_SLURM), *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)


def test_dry_run_prints_the_exact_sbatch_command_and_script(tmp_path):
    r = run("--config", str(TEMPLATE_CONF), "--dry-run", "--mem", "2G", "--gpu", "1", "--max-jobs-run", "2",
            "-A", "proj", "--sbatch_args", "--qos=high --exclusive", "JOB=1:4", "exp/log/feats.JOB.log",
            "python", "-m", "x", "--shard", "JOB", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    q = tmp_path / "exp/log/q"
    lines = r.stdout.splitlines()
    assert lines[0] == "# sbatch command (dry run, nothing submitted):"
    assert lines[1] == (f"sbatch --export=PATH --parsable --job-name=feats --mem-per-cpu 2G -p gpu --gres=gpu:1 -c 1 "
                        f"-A proj --qos=high --exclusive --array=1-4%2 --output={q}/feats.%a.out {q}/feats.sh")
    assert lines[2] == f"# job script {q}/feats.sh:"
    script = "\n".join(lines[3:]) + "\n"
    assert script.startswith("#!/usr/bin/env bash\n")
    assert f"cd {tmp_path}\n" in script
    for j in range(1, 5):
        assert f"\n{j})\nlog=exp/log/feats.{j}.log\n" in script
        assert f"( python -m x --shard {j}\n)" in script
    bash = subprocess.run(["bash", "-n"], input=script, capture_output=True, text=True)
    assert bash.returncode == 0, bash.stderr
    assert not (tmp_path / "exp").exists(), "a dry run must not write anything"


def test_unknown_option_is_an_error_before_submission(tmp_path):
    r = run("--config", str(TEMPLATE_CONF), "--gpus", "1", "log/x.log", "true", cwd=tmp_path)
    assert r.returncode == 1
    assert r.stderr == (f"run_slurm.py: option --gpus is not defined in {TEMPLATE_CONF} (add a line like "
                        "'option gpus=* --sbatch-flag $0' to it, or drop the option) (see run_slurm.py --help)\n")
    r = run("--config", str(tmp_path / "missing.conf"), "log/x.log", "true", cwd=tmp_path)
    assert r.returncode == 1
    assert r.stderr == (f"run_slurm.py: cannot read the Slurm conf {tmp_path / 'missing.conf'} given with --config: "
                        "No such file or directory (see run_slurm.py --help)\n")


@pytest.mark.slurm
def test_array_runs_every_task_with_its_own_log(slurm_cluster, tmp_path):
    r = run("--config", str(slurm_cluster.conf), "--max_jobs_run", "4", "JOB=1:4", "exp/log/hello.JOB.log",
            "echo", "hello", "JOB", "task=$SLURM_ARRAY_TASK_ID", cwd=tmp_path, env=slurm_cluster.env)
    assert r.returncode == 0, r.stderr
    for j in range(1, 5):
        lines = (tmp_path / f"exp/log/hello.{j}.log").read_text().splitlines()
        assert lines[0] == f"# echo hello {j} task=$SLURM_ARRAY_TASK_ID"
        assert lines[1].startswith("# Running on ") and lines[2].startswith("# Started at ")
        assert lines[4] == f"hello {j} task={j}"
        assert re.fullmatch(r"# Ended \(code 0\) at .*, elapsed time \d+ seconds", lines[-1])
    assert slurm_cluster.squeue() == ""


@pytest.mark.slurm
def test_failing_task_is_reported_with_its_log(slurm_cluster, tmp_path):
    r = run("--config", str(slurm_cluster.conf), "JOB=1:3", "log/f.JOB.log", "echo task JOB; [ JOB -ne 2 ] || exit 5",
            cwd=tmp_path, env=slurm_cluster.env)
    assert r.returncode == 5
    err = r.stderr.splitlines()
    assert re.fullmatch(r"run_slurm.py: Slurm job \d+ finished after \d+ s with failures", err[0])
    assert err[1:] == ["run_slurm.py: 1 / 3 failed (JOB=2); first failing log is in log/f.2.log",
                       "run_slurm.py:   JOB=2: exit code 5, log log/f.2.log"]
    assert "task 2\n# Accounting:" in (tmp_path / "log/f.2.log").read_text()


@pytest.mark.slurm
def test_gpu_and_multinode_through_the_conf(slurm_cluster, tmp_path):
    r = run("--config", str(slurm_cluster.conf), "--gpu", "1", "--num-nodes", "2", "log/mn.log",
            "echo rank=$NODE_RANK nnodes=$NNODES gpus=$CUDA_VISIBLE_DEVICES rdzv=$PET_RDZV_ENDPOINT",
            cwd=tmp_path, env=slurm_cluster.env)
    assert r.returncode == 0, r.stderr
    text = (tmp_path / "log/mn.log").read_text()
    ranks = sorted(re.findall(r"^rank=(\d) nnodes=2 gpus=\d rdzv=\S+:\d+$", text, re.M))
    assert ranks == ["0", "1"], text


@pytest.mark.slurm
def test_rejected_submission_shows_sbatch_error(slurm_cluster, tmp_path):
    r = run("--config", str(slurm_cluster.conf), "--mem", "1000G", "log/m.log", "true", cwd=tmp_path,
            env=slurm_cluster.env)
    assert r.returncode == 1
    assert r.stderr.startswith("run_slurm.py: sbatch failed (exit 1): sbatch: error:")
    assert "run_slurm.py: command: sbatch --export=PATH --parsable --job-name=m --mem-per-cpu 1000G -p cpu" in r.stderr


@pytest.mark.slurm
def test_ctrl_c_cancels_the_array(slurm_cluster, tmp_path):
    proc = subprocess.Popen(
        [sys.executable, str(RUN_SLURM), "--config", str(slurm_cluster.conf), "JOB=1:3", "log/s.JOB.log",
         "sleep 120"], cwd=tmp_path, env=slurm_cluster.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    while not all((tmp_path / f"log/s.{j}.log").exists() for j in (1, 2, 3)):
        assert proc.poll() is None, proc.communicate()
        assert time.time() < deadline, "the tasks did not start"
        time.sleep(0.1)
    assert slurm_cluster.squeue().count("RUNNING") == 3
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=90)
    assert proc.returncode == 130
    assert re.fullmatch(r"run_slurm.py: caught SIGINT: cancelled Slurm job \d+\n", err)
    assert slurm_cluster.squeue() == ""
    for j in (1, 2, 3):  # scancel's SIGTERM reached the job, whose footer records it
        assert "# Ended (code 143)" in (tmp_path / f"log/s.{j}.log").read_text()


DDP_CHECK = """\
import os
import torch
import torch.distributed as dist
dist.init_process_group("gloo")
t = torch.tensor([float(dist.get_rank() + 1)])
dist.all_reduce(t)
print(f"rank={dist.get_rank()} world={dist.get_world_size()} node={os.environ['NODE_RANK']} sum={t.item()}")
dist.destroy_process_group()
"""


@pytest.mark.slurm
@pytest.mark.slow
def test_one_torchrun_agent_per_node_forms_one_group(slurm_cluster, tmp_path):
    """The contract the training stage relies on: plain `torchrun --nproc_per_node G` under --num_nodes N."""
    (tmp_path / "ddp_check.py").write_text(DDP_CHECK)
    r = run("--config", str(slurm_cluster.conf), "--num_nodes", "2", "--num_threads", "2", "log/ddp.log",
            sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "ddp_check.py",
            cwd=tmp_path, env=slurm_cluster.env, timeout=300)
    text = (tmp_path / "log/ddp.log").read_text()
    assert r.returncode == 0, r.stderr + text
    # not anchored at line starts: two ranks of a node share the node's log, and their lines can interleave
    found = sorted(re.findall(r"rank=(\d) world=4 node=(\d) sum=10\.0", text))
    assert [rank for rank, _ in found] == ["0", "1", "2", "3"], text
    assert sorted(node for _, node in found) == ["0", "0", "1", "1"]


@pytest.mark.slurm
def test_train_cmd_from_a_recipe_script_on_slurm(slurm_cluster, tmp_path):
    (tmp_path / "utils").symlink_to(UTILS)
    (tmp_path / "conf").mkdir()
    (tmp_path / "conf/slurm_localhost.conf").write_text(slurm_cluster.conf.read_text())
    (tmp_path / "cmd.sh").write_text((REPO / "egs/TEMPLATE/cmd.sh").read_text())
    # path.sh is sourced by each task: the conf exports only PATH
    (tmp_path / "path.sh").write_text("export FROM_PATH_SH=yes\n")
    env = dict(slurm_cluster.env, BLSPKD_CMD_BACKEND="slurm", BLSPKD_SLURM_CONF="conf/slurm_localhost.conf")
    script = "set -euo pipefail\n. ./cmd.sh\n${train_cmd} JOB=1:2 exp/log/x.JOB.log 'echo shard JOB $FROM_PATH_SH'\n"
    r = subprocess.run(["bash", "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "\nshard 2 yes\n" in (tmp_path / "exp/log/x.2.log").read_text()
