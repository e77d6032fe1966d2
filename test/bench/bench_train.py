"""Training throughput of the trainer at the mini recipe's real model shapes: the caches of issue 11 against the plain
path (and fp32 against bf16, FSDP), each variant a real training run, all measured in the same invocation.

The models are built with random weights from the real configs and tokenizers (Whisper tiny.en, SmolLM2-135M-Instruct:
a directory with config.json + tokenizer/feature-extractor files; weights in it are ignored), so a machine that cannot
receive the 500 MB of real weights still measures the real shapes and sequence lengths. Speed does not depend on weight
values. The dump dir is a stage-2 dump of the mini recipe (e.g. ``./run.sh --stage 1 --stop_stage 2``); the bench copies
its index files to ``--out`` (absolute ark paths) and writes the random encoder's outputs there for the cache variant.

Usage:
    # issue 11: the caches, for KD, warm start and fine-tuning (run from the repository root)
    python test/bench/bench_train.py --whisper_config W --llm_config L --dump_dir egs/mini_espeak/dump/train \
        --config egs/mini_espeak/conf/pretrain.yaml egs/mini_espeak/conf/warmstart.yaml \
        egs/mini_espeak/conf/finetune.yaml --variants no_cache cache --steps 40 --out /tmp/bench_train
    python test/bench/bench_train.py ... --variants fp32 bf16 bf16_fsdp    # bf16_fsdp: torchrun, 1 process, FSDP
    python test/bench/bench_train.py ... --variants bf16_no_cache bf16_cache   # on a GPU

Variants: ``[fp32|bf16][_ddp|_fsdp][_cache|_no_cache]``; ``cache`` = model.cache_prefix + data.encoder_cache on,
``no_cache`` = both off (the path before issue 11); precision ``auto`` when not named.
Prints per config and variant: s/update, utterances/s, transcript tokens/s, the padded fractions of the feature frames
and of the LLM's positions (means over the updates after the first quarter, read from the trainer's own log), and the
ratio of updates/s to the first variant.
"""
from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
from pathlib import Path

# Fields of the trainer's progress lines ("step 10/40, ..., padding frames 3.1%, ..., 1.52 s/update, 6.6 utt/s, ...")
FIELDS = {name: re.compile(pattern) for name, pattern in (
    ("step", r"^.*\bstep (\d+)/\d+"), ("pad_frames", r"padding frames ([\d.]+)%"),
    ("pad_tokens", r"padding LLM tokens ([\d.]+)%"), ("s_update", r"([\d.]+) s/update"),
    ("utt_s", r"([\d.]+) utt/s"), ("tok_s", r"([\d.]+) tokens/s"))}
CACHES = {"cache": ["--model.cache_prefix", "true", "--data.encoder_cache", "true"],
          "no_cache": ["--model.cache_prefix", "false", "--data.encoder_cache", "false"]}


def build_random_model(config_dir: Path, out: Path, kind: str) -> Path:
    """Save a random-weight model of ``config_dir``'s config with its tokenizer/feature-extractor files."""
    import shutil

    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, WhisperForConditionalGeneration

    if (out / "config.json").exists():
        return out
    out.mkdir(parents=True)
    for f in config_dir.iterdir():
        if f.is_file() and not f.name.endswith((".safetensors", ".bin")):
            shutil.copy(f, out / f.name)
    torch.manual_seed(0)
    config = AutoConfig.from_pretrained(config_dir)
    model = WhisperForConditionalGeneration(config) if kind == "whisper" else AutoModelForCausalLM.from_config(config)
    model.save_pretrained(out)
    return out


def _absolute(location: str, base: Path) -> str:
    path, sep, offset = location.rpartition(":")
    return f"{(base / path).resolve()}:{offset}" if sep else str((base / location).resolve())


def bench_dump(src: Path, out: Path, whisper: Path) -> Path:
    """The dump dir's index files with absolute ark paths (a recipe's scp names them relative to the recipe dir, two
    levels above ``dump/<set>``), plus the random encoder's outputs (encoder cache)."""
    from blspkd.data.encoder_cache import dump_encoder_outputs

    out.mkdir(parents=True, exist_ok=True)
    for f in src.iterdir():
        if f.is_file() and not f.name.startswith("encoder_out"):
            text = f.read_text()
            if f.name == "feats.scp":
                text = "".join(f"{key} {_absolute(location, src.resolve().parents[1])}\n"
                               for key, location in (line.split(maxsplit=1) for line in text.splitlines() if line))
            (out / f.name).write_text(text)
    dump_encoder_outputs(out, str(whisper))
    return out


def run_variant(name: str, config: str, args, whisper: Path, llm: Path, dump: Path) -> list[dict[str, float]]:
    rest, caches = name, []
    for key in ("no_cache", "cache"):
        if rest == key or rest.endswith("_" + key):
            rest, caches = rest[: -len(key)].rstrip("_"), CACHES[key]
            break
    precision, _, dist = rest.partition("_")
    exp = Path(args.out) / f"exp_{Path(config).stem}_{name}"
    train = ["-m", "blspkd.bin.train", "--config", config, "--exp_dir", str(exp),
             "--model.speech_encoder", str(whisper), "--model.llm", str(llm),
             "--data.train", f"[{{path: {dump}}}]", "--data.valid", "[]",
             "--max_steps", str(args.steps), "--precision", precision or "auto", "--log_interval", "5",
             "--valid_interval", "100000", "--save_interval", "100000", "--tensorboard", "false", *caches, *args.extra]
    if dist:
        cmd = ["torchrun", "--standalone", "--nproc_per_node", "1", *train, "--distributed", dist]
    else:
        cmd = [sys.executable, *train]
    log = Path(args.out) / f"{Path(config).stem}_{name}.log"
    with open(log, "w") as f:
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        rc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env=env).returncode
    if rc != 0:
        print(f"{name}: training failed (exit {rc}); last lines of {log}:")
        print("".join(log.read_text().splitlines(keepends=True)[-15:]))
        return []
    points = []
    for line in log.read_text().splitlines():
        if FIELDS["step"].match(line) and FIELDS["s_update"].search(line):
            points.append({k: float(m[1]) if (m := r.search(line)) else float("nan") for k, r in FIELDS.items()})
    return points


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--whisper_config", type=Path, required=True)
    p.add_argument("--llm_config", type=Path, required=True)
    p.add_argument("--dump_dir", type=Path, required=True)
    p.add_argument("--config", nargs="+", required=True, help="one or more training configs, each run per variant")
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--out", default="/tmp/bench_train")
    p.add_argument("--variants", nargs="+", default=["no_cache", "cache"])
    p.add_argument("--extra", nargs=argparse.REMAINDER, default=[], help="more trainer options, e.g. --optim.lr 1e-4")
    args = p.parse_args()
    Path(args.out).mkdir(parents=True, exist_ok=True)
    whisper = build_random_model(args.whisper_config, Path(args.out) / "whisper", "whisper")
    llm = build_random_model(args.llm_config, Path(args.out) / "llm", "llm")
    dump = bench_dump(args.dump_dir, Path(args.out) / "dump", whisper)
    import torch

    device = torch.cuda.get_device_name() if torch.cuda.is_available() else f"CPU ({os.cpu_count()} cores)"
    print(f"device: {device}; torch {torch.__version__}; dump {args.dump_dir}; {args.steps} updates per variant")
    for config in args.config:
        print(f"{config}:")
        baseline = None
        for name in args.variants:
            points = run_variant(name, config, args, whisper, llm, dump)
            kept = [pt for pt in points if pt["step"] > args.steps // 4] or points
            if not kept:
                continue
            m = {k: sum(pt[k] for pt in kept) / len(kept) for k in FIELDS}
            baseline = baseline or m["s_update"]
            print(f"  {name:>14}: {m['s_update']:6.3f} s/update {m['utt_s']:7.1f} utt/s {m['tok_s']:8.1f} tokens/s"
                  f"   padding: frames {m['pad_frames']:4.1f}%, LLM tokens {m['pad_tokens']:4.1f}%"  # nan: no LLM pass
                  f"   x{baseline / m['s_update']:.2f} vs {args.variants[0]}")


if __name__ == "__main__":
    main()
