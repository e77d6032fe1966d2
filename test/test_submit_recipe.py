"""utils/submit_recipe.sh (a recipe as one Slurm batch job) and utils/run_allocation.py (GPU jobs inside it)."""
from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from fixtures.fake_corpora import MAIN_ROOT, recipe_sandbox

from blspkd.data.kaldi_dir import read_kv

SUBMIT = MAIN_ROOT / "utils" / "submit_recipe.sh"
RUN_ALLOC = MAIN_ROOT / "utils" / "run_allocation.py"


def alloc(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(RUN_ALLOC), *args], cwd=cwd, env=env, capture_output=True, text=True)


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    return {**env, **extra}


def test_dry_run_prints_sbatch_line_and_driver(tmp_path):
    recipe = recipe_sandbox(tmp_path, "librispeech")
    r = subprocess.run([str(SUBMIT), "--num_nodes", "2", "--gpus_per_node", "8", "--time", "3-00:00:00",
                        "--partition", "gpu", "--dry_run", "true", "--", "./run.sh", "--stage", "4", "--ngpu", "8",
                        "--num_nodes", "2"], cwd=recipe, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    first = r.stdout.splitlines()[0]
    assert first.startswith("sbatch --parsable --job-name blspkd_librispeech --nodes 2 --ntasks-per-node 1 ")
    assert "--gres gpu:8 --time 3-00:00:00 --partition gpu exp/submit/blspkd_librispeech.sh" in first
    assert "export BLSPKD_CMD_BACKEND=slurm BLSPKD_CUDA_CMD=utils/run_allocation.py" in r.stdout
    assert r.stdout.rstrip().endswith("exec ./run.sh --stage 4 --ngpu 8 --num_nodes 2")


def test_submit_needs_a_command(tmp_path):
    recipe = recipe_sandbox(tmp_path, "librispeech")
    r = subprocess.run([str(SUBMIT), "--num_nodes", "2"], cwd=recipe, capture_output=True, text=True)
    assert r.returncode == 1 and "nothing to submit: give the recipe command after '--'" in r.stderr


def test_cmd_sh_uses_the_allocation_for_gpu_jobs_only(tmp_path):
    recipe = recipe_sandbox(tmp_path, "librispeech")
    out = subprocess.run(["bash", "-c", ". ./cmd.sh; echo $train_cmd; echo $cuda_cmd; echo $decode_cmd"], cwd=recipe,
                         env=clean_env(BLSPKD_CMD_BACKEND="slurm", BLSPKD_CUDA_CMD="utils/run_allocation.py"),
                         capture_output=True, text=True, check=True).stdout.splitlines()
    assert out == ["utils/run_slurm.py --config conf/slurm.conf", "utils/run_allocation.py",
                   "utils/run_slurm.py --config conf/slurm.conf"]


def test_two_node_dry_run_is_one_srun_step(tmp_path):
    env = clean_env(SLURM_JOB_ID="77", SLURM_NTASKS="2", SLURM_JOB_NUM_NODES="2")
    r = alloc(["--dry_run", "--gpu", "8", "--num_nodes", "2", "exp/log/train.log", "utils/launch_train.sh", "--ngpu",
               "8", "--", "-m", "blspkd.bin.train", "--config", "conf/pretrain.yaml"], env, tmp_path)
    assert r.returncode == 0, r.stderr
    assert "srun --export=ALL --ntasks=2 --kill-on-bad-exit=1 bash -c" in r.stdout
    assert "export NODE_RANK=$SLURM_PROCID" in r.stdout
    assert "utils/launch_train.sh --ngpu 8 -- -m blspkd.bin.train --config conf/pretrain.yaml" in r.stdout


def test_single_node_runs_locally(tmp_path):
    r = alloc(["JOB=1:2", "log/x.JOB.log", "echo", "job", "JOB"], clean_env(SLURM_JOB_ID="5"), tmp_path)
    assert r.returncode == 0, r.stderr
    assert "job 2" in (tmp_path / "log" / "x.2.log").read_text()


def test_refuses_nested_srun_and_missing_allocation(tmp_path):
    r = alloc(["--num_nodes", "2", "log/x.log", "true"], clean_env(), tmp_path)
    assert r.returncode == 1 and "--num_nodes 2 needs a Slurm allocation" in r.stderr
    r = alloc(["--num_nodes", "2", "log/x.log", "true"], clean_env(SLURM_JOB_ID="5", SLURM_NTASKS="2",
                                                                   SLURM_STEP_ID="0"), tmp_path)
    assert r.returncode == 1 and "called from inside a Slurm job step (srun)" in r.stderr
    r = alloc(["--num_nodes", "4", "log/x.log", "true"], clean_env(SLURM_JOB_ID="5", SLURM_NTASKS="2"), tmp_path)
    assert r.returncode == 1 and "--num_nodes 4 but this allocation (job 5) has 2 node(s)" in r.stderr


def wait_for(job_id: str, cluster, timeout: float = 300) -> str:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if job_id not in cluster.squeue():
            break
        time.sleep(1)
    else:
        subprocess.run(["scancel", job_id], env=cluster.env)
        raise AssertionError(f"job {job_id} still running after {timeout} s")
    info = subprocess.run(["scontrol", "show", "job", job_id], env=cluster.env, capture_output=True, text=True).stdout
    m = re.search(r"ExitCode=(\d+):", info)
    return m.group(1) if m else "?"


@pytest.mark.slurm
@pytest.mark.slow
def test_recipe_stages_1_2_as_one_batch_job(slurm_cluster, fake_librispeech, tiny_whisper_dir, tmp_path):
    """The driver job runs stages 1-2; stage 2's extraction jobs go to a Slurm array (their q/ scripts prove it)."""
    recipe = recipe_sandbox(tmp_path, "librispeech")
    env = {**slurm_cluster.env, "BLSPKD_SLURM_CONF": str(slurm_cluster.conf), "LIBRISPEECH": ""}
    r = subprocess.run([str(SUBMIT), "--cpus_per_task", "1", "--time", "10:00", "--", "./run.sh", "--stage", "1",
                        "--stop_stage", "2", "--train_set", "train", "--valid_set", "dev_clean", "--test_sets",
                        "test_clean", "--nj", "2", "--speech_encoder", str(tiny_whisper_dir), "--local_data_opts",
                        f"--librispeech_dir {fake_librispeech.root} --train_sets train-clean-100"],
                       cwd=recipe, env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    job_id = re.search(r"submitted job (\d+)", r.stdout).group(1)
    code = wait_for(job_id, slurm_cluster)
    log = (recipe / "exp" / "submit" / f"blspkd_librispeech.{job_id}.log").read_text()
    assert code == "0", log[-3000:]
    assert "successfully finished stages 1-2" in log
    for name in ("train", "dev_clean", "test_clean"):
        dump = recipe / "dump" / name
        assert (dump / ".completed").is_file()
        assert sorted(read_kv(dump / "utt2num_frames")) == sorted(read_kv(recipe / "data" / name / "text"))
        assert list((dump / "log" / "q").glob("*.sh")), "stage 2 did not go through run_slurm.py job arrays"


@pytest.mark.slurm
def test_two_tasks_of_one_allocation_run_as_one_step(slurm_cluster, tmp_path):
    """Inside a batch job with 2 tasks, --num_nodes 2 runs the command once per task with distinct NODE_RANKs."""
    script = tmp_path / "driver.sh"
    script.write_text(f"#!/usr/bin/env bash\ncd {tmp_path}\n{sys.executable} {RUN_ALLOC} --num_nodes 2 log/mn.log "
                      "'echo rank=$NODE_RANK of $NNODES at $MASTER_ADDR:$MASTER_PORT'\n")
    script.chmod(0o755)
    r = subprocess.run(["sbatch", "--parsable", "--ntasks", "2", "--time", "5:00", "--output",
                        str(tmp_path / "out.log"), str(script)], env=slurm_cluster.env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    code = wait_for(r.stdout.strip().split(";")[0], slurm_cluster, timeout=120)
    log = (tmp_path / "log" / "mn.log").read_text()
    assert code == "0", log + (tmp_path / "out.log").read_text()
    assert sorted(re.findall(r"rank=(\d) of 2", log)) == ["0", "1"]
