"""Configuration of a training run (stages 4 and 5), read by ``blspkd.utils.config.parse_config``.

One dataclass tree for both stages; the recipe's ``conf/pretrain.yaml`` and ``conf/finetune.yaml`` differ in values.
Every key is strict: a typo in a YAML file or on the command line is an error naming the key.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from blspkd.models.configuration_blspkd import BlspKdConfig
from blspkd.utils.config import ConfigError

logger = logging.getLogger(__name__)


@dataclass
class DumpDirConfig:
    """One stage-2 dump dir in the training mix."""

    path: str = ""
    # Examples drawn from this dir per epoch, relative to its size: 2.0 repeats every utterance twice, 0.5 takes a
    # random half (a different half every epoch). Mixing corpora of very different sizes is what the weights are for.
    weight: float = 1.0


@dataclass
class TaskConfig:
    """One kind of training example built from a dump dir's per-utterance files.

    ``kind`` names a task of the registry (blspkd/tasks.py: plain, transcription, continuation, translation,
    spoken_instruction, instruction, ...), which says where its instruction and response come from; ``instruction``
    replaces the task's default text, whose ``{language}`` field is filled from ``language``.
    """

    kind: str = "plain"
    weight: float = 1.0
    instruction: str | None = None
    language: str | None = None


@dataclass
class DataConfig:
    train: list[DumpDirConfig] = field(default_factory=list)
    valid: list[str] = field(default_factory=list)
    tasks: list[TaskConfig] = field(default_factory=lambda: [TaskConfig()])
    # "frames": batch_bins counts padded feature frames (100/s); "tokens": padded transcript tokens (utt2num_tokens).
    batch_type: Literal["frames", "tokens"] = "frames"
    batch_bins: int = 20000
    max_batch_size: int = 64
    # Read the frozen speech encoder's outputs cached by stage 2 (blspkd.sh --encoder_cache true;
    # blspkd/data/encoder_cache.py) instead of running the encoder on the log-mel features in every epoch.
    encoder_cache: bool = False
    num_workers: int = 2
    # Number of validation utterances whose generations (speech in, text out) are written to the log at each validation.
    num_sample_generations: int = 3
    max_valid_batches: int | None = None


@dataclass
class OptimConfig:
    lr: float = 1.0e-4
    # Peak learning rate of the PLoRA weights (LLM side) when it should differ from the adapter's ``lr``; None = ``lr``.
    # Both follow the same warmup and decay. A lower one adapts the LLM less on speech positions (README, mini recipe).
    plora_lr: float | None = None
    # Peak learning rate of the speech encoder's weights when it is trained (model.freeze_speech_encoder: false); None
    # = ``lr``. A pretrained encoder usually wants one far below a freshly initialised adapter's.
    speech_encoder_lr: float | None = None
    weight_decay: float = 0.05
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1.0e-8
    warmup_steps: int = 1000
    grad_accum: int = 1
    clip_grad_norm: float | None = 1.0


def saved_model_config(model_dir: str) -> BlspKdConfig | None:
    """The config.json of a saved model dir (``init_from``), read as strictly as the model section itself; None (and a
    warning) while the dir does not exist yet, so that a stage-5 config loads for inspection before stage 4 ran (the
    trainer refuses to start without it)."""
    if not (Path(model_dir) / "config.json").is_file():
        logger.warning("init_from %s: no config.json there yet; the model section is this config's own, without the "
                       "saved model's values", model_dir)
        return None
    return BlspKdConfig.from_pretrained(model_dir)


def check_init_from(model_dir: str) -> Path:
    path = Path(model_dir)
    for name in ("config.json", "model.safetensors"):
        if not (path / name).is_file():
            raise ConfigError(f"init_from: {path / name} not found (give a model dir written by save_pretrained, e.g. "
                              "exp/pretrain/model)")
    return path


@dataclass
class TrainConfig:
    exp_dir: str = "exp/blspkd"
    # The model (blspkd.models.BlspKdConfig: base models, CFormer sizes, PLoRA, loss weights, prompts); with init_from,
    # the config saved with that model is the base and these keys override it.
    model: BlspKdConfig = field(default_factory=BlspKdConfig, metadata={"base": ("init_from", saved_model_config)})
    # A model directory (save_pretrained output, e.g. the previous stage's exp_dir/model) whose trainable weights start
    # this run. Stage 5 starts from stage 4 this way.
    init_from: str | None = None
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    seed: int = 0
    # Optimizer updates of the whole run; the lr decays linearly to 0 at the end of it (after warmup).
    max_steps: int | None = None
    num_epochs: int = 1
    # Stop early after this many updates, as if the job had been killed (resumes seamlessly when re-run without it).
    stop_after_steps: int | None = None
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    gradient_checkpointing: bool = False
    distributed: Literal["ddp", "fsdp"] = "ddp"
    find_unused_parameters: bool = False
    log_interval: int = 10
    valid_interval: int = 500
    save_interval: int = 500
    keep_checkpoints: int = 3
    tensorboard: bool = True
    log_level: str = "INFO"
