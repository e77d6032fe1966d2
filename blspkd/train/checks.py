"""Checks of a training config that need only the config and the file system, run before anything is built.

Building the model loads the speech encoder and the LLM (minutes for a 7B model) and reading the dump dirs takes a
while on a large corpus; a zero interval, a missing directory or a speech encoder path that points at an LLM must not
surface as a crash after that. ``check_train_config`` raises one ConfigError listing every problem, each naming the key
(and the path) and the fix. The Trainer calls it first (so ``python -m blspkd.bin.train`` and ``run`` both get it).
"""
from __future__ import annotations

import json
import math
import re
from pathlib import Path

from blspkd.data.audio_dump import is_raw_dump
from blspkd.train.config import TrainConfig, check_init_from
from blspkd.utils.config import ConfigError

_HUB_ID = re.compile(r"^[\w.-]+/[\w.-]+$")


def _positive(errors: list[str], key: str, value: int | None, optional: bool = False) -> None:
    if value is None and optional:
        return
    if value is None or value < 1:
        errors.append(f"{key} must be >= 1, got {value}" + (" (leave it out for no limit)" if optional else ""))


def _dump_dir(errors: list[str], key: str, path: str) -> None:
    d = Path(path)
    if not path or not d.is_dir():
        errors.append(f"{key}: dump dir '{path}' not found (a stage-2 output such as dump/train; run stage 2)")
        return
    names = ("wav.scp" if is_raw_dump(d) else "feats.scp", "text", "utt2num_frames")  # --feats_type raw or fbank
    missing = [name for name in names if not (d / name).is_file()]
    if missing:
        errors.append(f"{key}: '{path}' lacks {', '.join(missing)}: not a complete stage-2 dump dir (run stage 2)")


def _model_dir(errors: list[str], key: str, path: str | None, kind: str) -> None:
    """A local Hugging Face model dir whose config.json says it is a Whisper model (kind 'whisper') or not one."""
    if not path:
        errors.append(f"{key} is not set: give a local Hugging Face model directory")
        return
    d = Path(path)
    if not d.exists():
        from huggingface_hub import constants

        if _HUB_ID.match(path) and not constants.HF_HUB_OFFLINE:
            return  # a hub id, resolved by transformers where a hub is reachable
        errors.append(f"{key}: model directory '{path}' not found (looked in {Path.cwd()}). Fix: give the directory of "
                      "a saved Hugging Face model (python -m blspkd.bin.prepare_pretrained prepares the mini recipe's)")
        return
    try:
        model_type = json.loads((d / "config.json").read_text(encoding="utf-8")).get("model_type")
    except (OSError, ValueError, AttributeError):
        errors.append(f"{key}: '{path}' has no readable config.json: not a saved Hugging Face model directory")
        return
    if kind == "whisper" and model_type != "whisper":
        errors.append(f"{key}: '{path}' holds a '{model_type}' model (config.json model_type), not Whisper. Fix: give "
                      "a Whisper model directory (its encoder is the speech encoder)")
    elif kind == "whisper" and not (d / "preprocessor_config.json").is_file():
        errors.append(f"{key}: '{path}' has no preprocessor_config.json (the Whisper feature extractor settings)")
    elif kind == "llm" and model_type == "whisper":
        errors.append(f"{key}: '{path}' holds a Whisper model; the LLM must be a causal language model")


def check_train_config(cfg: TrainConfig) -> None:
    """Raise a ConfigError naming every key whose value cannot work (see the module docstring)."""
    errors: list[str] = []
    for key in ("log_interval", "valid_interval", "save_interval", "num_epochs", "keep_checkpoints"):
        _positive(errors, key, getattr(cfg, key))
    for key in ("max_steps", "stop_after_steps"):
        _positive(errors, key, getattr(cfg, key), optional=True)
    _positive(errors, "optim.grad_accum", cfg.optim.grad_accum)
    _positive(errors, "data.batch_bins", cfg.data.batch_bins)
    _positive(errors, "data.max_batch_size", cfg.data.max_batch_size)
    if cfg.optim.warmup_steps < 0:
        errors.append(f"optim.warmup_steps must be >= 0, got {cfg.optim.warmup_steps}")
    if not (math.isfinite(cfg.optim.lr) and cfg.optim.lr > 0):
        errors.append(f"optim.lr must be a positive number, got {cfg.optim.lr}")
    for key in ("plora_lr", "speech_encoder_lr"):
        group_lr = getattr(cfg.optim, key)
        if group_lr is not None and not (math.isfinite(group_lr) and group_lr > 0):
            errors.append(f"optim.{key} must be a positive number or null (= optim.lr), got {group_lr}")
    if cfg.data.num_workers < 0:
        errors.append(f"data.num_workers must be >= 0, got {cfg.data.num_workers}")
    if not cfg.data.train:
        errors.append("data.train is empty: list at least one dump dir (path: dump/<set>)")
    for i, d in enumerate(cfg.data.train):
        _dump_dir(errors, f"data.train[{i}].path", d.path)
        if not (math.isfinite(d.weight) and d.weight >= 0):
            errors.append(f"data.train[{i}].weight must be a number >= 0, got {d.weight}")
    for i, path in enumerate(cfg.data.valid):
        _dump_dir(errors, f"data.valid[{i}]", path)
    weights = [t.weight for t in cfg.data.tasks]
    if not all(math.isfinite(w) and w >= 0 for w in weights) or not sum(weights) > 0:
        errors.append(f"data.tasks weights must be numbers >= 0 with a positive sum, got {weights}")
    if cfg.init_from is not None:
        try:
            check_init_from(cfg.init_from)
        except ConfigError as e:
            errors.append(str(e))
    # cfg.model was typed and checked by the config parser (unknown keys, values); its directories are checked here
    _model_dir(errors, "model.speech_encoder", cfg.model.speech_encoder, "whisper")
    _model_dir(errors, "model.llm", cfg.model.llm, "llm")
    if errors:
        raise ConfigError(f"{len(errors)} problem(s) in the training config:\n  " + "\n  ".join(errors))
