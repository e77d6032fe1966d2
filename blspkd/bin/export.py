"""Stage 8: export a trained BLSP-KD model as a self-contained Hugging Face style directory with a model card.

Usage:
    python -m blspkd.bin.export --model_dir exp/finetune --out_dir exp/finetune/export --results_md RESULTS.md
    python -m blspkd.bin.export --model_dir exp/finetune/model --out_dir /shared/models/blspkd --copy_base false

--model_dir: a model directory (config.json + model.safetensors) or an experiment dir holding model/.
--copy_base true (default) copies the Whisper and LLM directories into the export (relocatable); false records their
absolute paths instead (small, tied to this machine). --results_md: stage 7's RESULTS.md, whose table goes into the
model card. The export is written next to --out_dir first and renamed when complete; an existing one is replaced.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass

from blspkd.bin._args import cli
from blspkd.export import export_model
from blspkd.utils.config import ConfigError, parse_config
from blspkd.utils.logging import setup_logging


@dataclass
class ExportConfig:
    model_dir: str = ""
    out_dir: str = ""
    copy_base: bool = True
    results_md: str | None = None
    log_level: str = "INFO"


@cli
def main(argv: list[str] | None = None) -> int:
    cfg = parse_config(ExportConfig, argv, prog="python -m blspkd.bin.export", description=__doc__)
    if not cfg.model_dir or not cfg.out_dir:
        raise ConfigError("--model_dir and --out_dir are required")
    setup_logging(cfg.log_level)
    export_model(cfg.model_dir, cfg.out_dir, cfg.copy_base, cfg.results_md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
