"""Train a BLSP-KD model: KD pretraining (recipe stage 4) or instruction tuning (stage 5).

Usage:
    python -m blspkd.bin.train --config conf/pretrain.yaml --exp_dir exp/pretrain [--key value ...]
    torchrun --nproc_per_node 2 -m blspkd.bin.train --config conf/pretrain.yaml --exp_dir exp/pretrain
    python -m blspkd.bin.train --config conf/pretrain.yaml --print_config

Every key of the YAML file can be overridden on the command line (``--optim.lr 2e-5``, ``--data.batch_bins 8000``);
keys of the model section too (``--model.temperature 1.0`` changes one model setting, ``--model '{...}'`` replaces all).
Re-running the same command resumes from the newest checkpoint in exp_dir; a finished run (exp_dir/.completed) is
skipped.
"""
from __future__ import annotations

import sys

import yaml

from blspkd.train.config import TrainConfig
from blspkd.train.trainer import run
from blspkd.utils.config import ConfigError, parse_config
from blspkd.utils.logging import setup_logging


def split_model_overrides(argv: list[str]) -> tuple[list[str], dict]:
    """Take ``--model.KEY VALUE`` pairs out of argv (the model section is a free-form dict validated by the model)."""
    rest, model = [], {}
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg.startswith("--model.") or arg.startswith("--model-"):
            if "=" in arg:
                name, raw = arg[len("--model."):].split("=", 1)
                i += 1
            elif i + 1 < len(argv):
                name, raw = arg[len("--model."):], argv[i + 1]
                i += 2
            else:
                raise ConfigError(f"command line: option '{arg}' needs a value")
            model[name.replace("-", "_")] = yaml.safe_load(raw) if raw else ""
        else:
            rest.append(arg)
            i += 1
    return rest, model


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        rest, model_overrides = split_model_overrides(argv)
        if model_overrides and any(a in ("--print_config", "--print-config") for a in rest):
            rest = [a for a in rest if a not in ("--print_config", "--print-config")]
            cfg = parse_config(TrainConfig, rest, prog="python -m blspkd.bin.train", description=__doc__)
            cfg.model.update(model_overrides)
            from blspkd.utils.config import to_yaml

            print(to_yaml(cfg), end="")
            return
        cfg = parse_config(TrainConfig, rest, prog="python -m blspkd.bin.train", description=__doc__)
        cfg.model.update(model_overrides)
        setup_logging(cfg.log_level)
        run(cfg)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
