"""Stage 2 (optional): the frozen speech encoder's outputs of a dump dir, cached for training (data.encoder_cache).

Usage:
    python -m blspkd.bin.dump_encoder_outputs --dump_dir dump/train --speech_encoder downloads/whisper-tiny.en
    python -m blspkd.bin.dump_encoder_outputs --dump_dir dump/train --speech_encoder DIR --device cuda --pad_to_30s true

Writes dump_dir/encoder_out.{f16,scp,json} (blspkd/data/encoder_cache.py says what they hold and what they cost on
disk); skipped when encoder_out.json says the same encoder already wrote all of them. Options (also settable in a YAML
file with --config): dump_dir, speech_encoder, pad_to_30s, batch_frames, device, log_level; --print_config shows all.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass

from blspkd.bin._args import cli
from blspkd.utils.config import ConfigError, parse_config
from blspkd.utils.logging import setup_logging


@dataclass
class DumpEncoderConfig:
    dump_dir: str = ""
    speech_encoder: str = ""
    # Must match the training config's model.pad_to_30s: the outputs differ (training refuses a mismatch).
    pad_to_30s: bool = False
    batch_frames: int = 30000  # padded log-mel frames per encoder batch
    device: str = "cpu"
    log_level: str = "INFO"


@cli
def main(argv: list[str] | None = None) -> int:
    cfg = parse_config(DumpEncoderConfig, argv, prog="python -m blspkd.bin.dump_encoder_outputs", description=__doc__)
    if not cfg.dump_dir or not cfg.speech_encoder:
        raise ConfigError("--dump_dir and --speech_encoder are required")
    setup_logging(cfg.log_level)
    from blspkd.data.encoder_cache import dump_encoder_outputs

    dump_encoder_outputs(cfg.dump_dir, cfg.speech_encoder, cfg.pad_to_30s, cfg.batch_frames, cfg.device)
    return 0


if __name__ == "__main__":
    sys.exit(main())
