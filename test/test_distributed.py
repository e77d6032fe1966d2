"""Multi-process training on CPU: 2-process gloo DDP through utils/launch_train.sh (torchrun), and two Slurm tasks
standing in for two nodes (one torchrun agent each, c10d rendezvous) on the localhost cluster."""
from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest
import torch

from blspkd.train.checkpoint import latest_checkpoint

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "egs/mini_espeak/conf/tiny/pretrain.yaml"


def train_args(whisper, llm, dumps, exp, *extra) -> list[str]:
    return ["-m", "blspkd.bin.train", "--config", str(TINY), "--exp_dir", str(exp),
            "--data.train", f"[{{path: {dumps['train']}}}]", "--data.valid", f"[{dumps['valid']}]",
            "--model.speech_encoder", str(whisper), "--model.llm", str(llm), "--log_level", "DEBUG",
            "--data.batch_bins", "700", "--max_steps", "3", "--save_interval", "1", *extra]


def batches_by_rank(log: str) -> dict[int, list[set[str]]]:
    """Per rank, the key sets of the batches it trained on (from the DEBUG lines of the trainer)."""
    out: dict[int, list[set[str]]] = {}
    for m in re.finditer(r"\[[^:\]]+:(\d+)/(\d+)\][^\n]*epoch 1 batch \d+ keys: ([^\n]*)", log):
        out.setdefault(int(m.group(1)), []).append(set(m.group(3).split()))
    return out


def check_two_ranks(log: str, exp: Path) -> None:
    assert "[" in log and re.search(r"\[[^:\]]+:1/2\]", log), "no line from rank 1 of a world of 2"
    assert "joined process group: rank 1 of 2, backend gloo" in log
    per_rank = batches_by_rank(log)
    assert sorted(per_rank) == [0, 1]
    keys0 = set().union(*per_rank[0])
    keys1 = set().union(*per_rank[1])
    assert keys0 and keys1 and not keys0 & keys1, "both ranks trained on the same utterances"
    # weights identical on both ranks after every update (checked by the trainer at each checkpoint)
    for step in (1, 2, 3):
        assert f"replica check at update {step}: trainable weights identical on 2 ranks" in log
    assert (exp / ".completed").is_file() and latest_checkpoint(exp).name == "step_00000003"
    state = torch.load(latest_checkpoint(exp) / "state.pt", weights_only=True)
    assert state["world_size"] == 2 and len(state["rng"]) == 2


@pytest.mark.slow
def test_two_process_gloo_ddp_via_launcher(tiny_whisper_dir, tiny_llm_dir, train_dump_dirs, tmp_path):
    exp = tmp_path / "exp"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    r = subprocess.run(["utils/launch_train.sh", "--nproc_per_node", "2", "--",
                        *train_args(tiny_whisper_dir, tiny_llm_dir, train_dump_dirs, exp)],
                       cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    log = r.stdout + r.stderr
    assert r.returncode == 0, log[-4000:]
    assert "torchrun --standalone, 2 processes" in log
    check_two_ranks(log, exp)


def test_launcher_rejects_bad_options():
    r = subprocess.run(["utils/launch_train.sh", "--ngpu", "two", "--", "-c", "pass"], cwd=REPO, capture_output=True,
                       text=True)
    assert r.returncode == 1 and "--ngpu must be a non-negative integer, got 'two'" in r.stderr
    r = subprocess.run(["utils/launch_train.sh", "--ngpu", "0"], cwd=REPO, capture_output=True, text=True)
    assert r.returncode == 1 and "nothing to launch after '--'" in r.stderr
    r = subprocess.run(["utils/launch_train.sh", "--", "-c", "print('single')"], cwd=REPO, capture_output=True,
                       text=True)
    assert r.returncode == 0 and r.stdout.strip() == "single"


@pytest.mark.slow
@pytest.mark.slurm
def test_two_slurm_nodes_one_torchrun_agent_each(slurm_cluster, tiny_whisper_dir, tiny_llm_dir, train_dump_dirs,
                                                 tmp_path):
    exp = tmp_path / "exp"
    log_file = tmp_path / "train.log"
    env = dict(slurm_cluster.env, OMP_NUM_THREADS="1")
    r = subprocess.run(["utils/run_slurm.py", "--config", str(slurm_cluster.conf), "--num_nodes", "2",
                        "--time", "15", str(log_file), "utils/launch_train.sh", "--",
                        *train_args(tiny_whisper_dir, tiny_llm_dir, train_dump_dirs, exp)],
                       cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    log = log_file.read_text() if log_file.exists() else ""
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:] + log[-4000:]
    assert re.search(r"torchrun node 0 of 2", log) and re.search(r"torchrun node 1 of 2", log)
    check_two_ranks(log, exp)


def launch(args: list[str]) -> str:
    r = subprocess.run(["utils/launch_train.sh", "--nproc_per_node", "2", "--", *args], cwd=REPO,
                       env=dict(os.environ, OMP_NUM_THREADS="1"), capture_output=True, text=True, timeout=600)
    log = r.stdout + r.stderr
    assert r.returncode == 0, log[-4000:]
    return log


@pytest.mark.slow
def test_fsdp_on_gloo_trains_checkpoints_and_resumes_exactly(tiny_whisper_dir, tiny_llm_dir, train_dump_dirs,
                                                             tmp_path):
    from safetensors.torch import load_file

    base = (tiny_whisper_dir, tiny_llm_dir, train_dump_dirs)
    log = launch(train_args(*base, tmp_path / "full", "--distributed", "fsdp"))
    assert re.search(r"FSDP: sharded \d+ blocks \([^)]*LlamaDecoderLayer", log), "the LLM's blocks were not sharded"
    assert "training complete: 3 updates" in log
    launch(train_args(*base, tmp_path / "cut", "--distributed", "fsdp", "--stop_after_steps", "2"))
    assert not (tmp_path / "cut" / ".completed").exists()
    log = launch(train_args(*base, tmp_path / "cut", "--distributed", "fsdp"))
    assert "resumed from" in log
    a = load_file(str(tmp_path / "full" / "model" / "model.safetensors"))
    b = load_file(str(tmp_path / "cut" / "model" / "model.safetensors"))
    assert a.keys() == b.keys() and len(a) > 10
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-6, msg=k)
