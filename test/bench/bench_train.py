"""Training throughput of the trainer at the mini recipe's real model shapes, fp32 against bf16 (and FSDP), one device.

The models are built with random weights from the real configs and tokenizers (Whisper tiny.en, SmolLM2-135M-Instruct:
a directory holding config.json + tokenizer/feature-extractor files and no weights), so a machine that cannot receive
the 500 MB of real weights still measures the real shapes and sequence lengths. Speed does not depend on weight values.

Usage:
    python test/bench/bench_train.py --whisper_config .gpucheck/whisper --llm_config .gpucheck/llm \
        --dump_dir .gpucheck/dump --config egs/mini_espeak/conf/pretrain.yaml --steps 40 --out /tmp/bench_train
    python test/bench/bench_train.py ... --variants fp32 bf16 bf16_fsdp    # bf16_fsdp: torchrun, 1 process, FSDP

Prints one line per variant: updates/s, utterances/s, tokens/s (means over the updates after the first quarter,
read from the trainer's own log), and the ratio to the first variant measured in the same run.
"""
from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
from pathlib import Path

LOG_LINE = re.compile(r"step (\d+)/\d+.* ([\d.]+) utt/s, ([\d.]+) tokens/s")


def build_random_model(config_dir: Path, out: Path, kind: str) -> Path:
    """Save a random-weight model of ``config_dir``'s config with its tokenizer/feature-extractor files."""
    import shutil

    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, WhisperForConditionalGeneration

    if (out / "config.json").exists():
        return out
    out.mkdir(parents=True)
    for f in config_dir.iterdir():
        shutil.copy(f, out / f.name)
    torch.manual_seed(0)
    config = AutoConfig.from_pretrained(config_dir)
    model = WhisperForConditionalGeneration(config) if kind == "whisper" else AutoModelForCausalLM.from_config(config)
    model.save_pretrained(out)
    return out


def run_variant(name: str, args, whisper: Path, llm: Path) -> list[tuple[int, float, float]]:
    precision, _, dist = name.partition("_")
    exp = Path(args.out) / f"exp_{name}"
    train = ["-m", "blspkd.bin.train", "--config", args.config, "--exp_dir", str(exp),
             "--model.speech_encoder", str(whisper), "--model.llm", str(llm),
             "--data.train", f"[{{path: {args.dump_dir}}}]", "--data.valid", "[]",
             "--max_steps", str(args.steps), "--precision", precision, "--log_interval", "5",
             "--valid_interval", "100000", "--save_interval", "100000", "--tensorboard", "false", *args.extra]
    if dist:
        cmd = ["torchrun", "--standalone", "--nproc_per_node", "1", *train, "--distributed", dist]
    else:
        cmd = [sys.executable, *train]
    log = Path(args.out) / f"{name}.log"
    with open(log, "w") as f:
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        rc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env=env).returncode
    if rc != 0:
        print(f"{name}: training failed (exit {rc}); last lines of {log}:")
        print("".join(log.read_text().splitlines(keepends=True)[-15:]))
        return []
    return [(int(m[1]), float(m[2]), float(m[3])) for m in LOG_LINE.finditer(log.read_text())]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--whisper_config", type=Path, required=True)
    p.add_argument("--llm_config", type=Path, required=True)
    p.add_argument("--dump_dir", required=True)
    p.add_argument("--config", required=True)
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--out", default="/tmp/bench_train")
    p.add_argument("--variants", nargs="+", default=["fp32", "bf16"])
    p.add_argument("--extra", nargs=argparse.REMAINDER, default=[], help="more trainer options, e.g. --optim.lr 1e-4")
    args = p.parse_args()
    Path(args.out).mkdir(parents=True, exist_ok=True)
    whisper = build_random_model(args.whisper_config, Path(args.out) / "whisper", "whisper")
    llm = build_random_model(args.llm_config, Path(args.out) / "llm", "llm")
    import torch

    device = torch.cuda.get_device_name() if torch.cuda.is_available() else f"CPU ({os.cpu_count()} cores)"
    print(f"device: {device}; torch {torch.__version__}; config {args.config}; {args.steps} updates per variant")
    baseline = None
    for name in args.variants:
        points = run_variant(name, args, whisper, llm)
        kept = [pt for pt in points if pt[0] > args.steps // 4] or points
        if not kept:
            continue
        utt_s = sum(pt[1] for pt in kept) / len(kept)
        tok_s = sum(pt[2] for pt in kept) / len(kept)
        baseline = baseline or utt_s
        print(f"{name:>10}: {utt_s:8.1f} utt/s {tok_s:9.1f} tokens/s   x{utt_s / baseline:.2f} vs {args.variants[0]}")


if __name__ == "__main__":
    main()
