"""Train a BLSP-KD model: KD pretraining (recipe stage 4) or instruction tuning (stage 5).

Usage:
    python -m blspkd.bin.train --config conf/pretrain.yaml --exp_dir exp/pretrain [--key value ...]
    torchrun --nproc_per_node 2 -m blspkd.bin.train --config conf/pretrain.yaml --exp_dir exp/pretrain
    python -m blspkd.bin.train --config conf/pretrain.yaml --print_config

Every key of the YAML file can be overridden on the command line (``--optim.lr 2e-5``, ``--data.batch_bins 8000``),
the model's too (``--model.adapter.num_heads 4``, ``--model.losses '{input_kl: 1.0, cif: 1.0}'``); ``--help`` lists
them all. With ``--init_from DIR`` the model section starts from DIR/config.json and the given keys override it.
Re-running the same command resumes from the newest checkpoint in exp_dir; a finished run (exp_dir/.completed) is
skipped.
"""
from __future__ import annotations

import sys

from blspkd.bin._args import cli
from blspkd.train.config import TrainConfig
from blspkd.train.trainer import run
from blspkd.utils.config import parse_config
from blspkd.utils.logging import setup_logging


@cli
def main(argv: list[str] | None = None) -> int:
    cfg = parse_config(TrainConfig, argv, prog="python -m blspkd.bin.train", description=__doc__)
    setup_logging(cfg.log_level)
    run(cfg)
    return 0


if __name__ == "__main__":
    sys.exit(main())
