"""Stage 3: the instruction-following test sets (blspkd/instruction_eval.py) and what the shell stages need of them.

Usage:
    # one dump dir per instruction of the config: dump/test_<name> (a subset of dump/test + its instruction file)
    python -m blspkd.bin.make_instruction_sets --config conf/instructions.yaml --dump_dir dump/test
    # the text placed before the speech of a spoken-request set (spoken questions), or none
    python -m blspkd.bin.make_instruction_sets --config conf/instructions.yaml --spoken_requests dump/test_questions
    # instruction-tuning data: the instruction file of the training set's chosen utterances
    python -m blspkd.bin.make_instruction_sets --config conf/instructions.yaml --train_dir dump/train
    # for scripts: the derived set names of the given sets, or one config value
    python -m blspkd.bin.make_instruction_sets --config conf/instructions.yaml --names "test test_real"
    python -m blspkd.bin.make_instruction_sets --config conf/instructions.yaml --get max_new_tokens
"""
from __future__ import annotations

import sys

from blspkd.bin._args import ArgumentParser, cli, opt
from blspkd.instruction_eval import (
    derived_set_names,
    load_config,
    write_instruction_sets,
    write_spoken_request_instruction,
    write_train_instructions,
)
from blspkd.utils.logging import setup_logging


@cli
def main(argv: list[str] | None = None) -> int:
    p = ArgumentParser("python -m blspkd.bin.make_instruction_sets", __doc__)
    p.add_argument("--config", required=True, help="the instruction-following YAML (see blspkd/instruction_eval.py)")
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument(*opt("dump_dir"), dest="dump_dir", help="write the instruction subsets of this dump dir")
    what.add_argument(*opt("spoken_requests"), dest="spoken_requests", metavar="DUMP_DIR",
                      help="write (or remove) the instruction file of this spoken-request dump dir")
    what.add_argument(*opt("train_dir"), dest="train_dir", metavar="DUMP_DIR",
                      help="write the instruction file of this training dump dir (train_num_utts utterances)")
    what.add_argument("--names", metavar="SETS", help="print the derived set names of these (space-separated) sets")
    what.add_argument("--get", choices=["num_utts", "max_new_tokens", "train_num_utts"], help="print one config value")
    args = p.parse_args(argv)
    cfg = load_config(args.config)
    if args.names is not None:
        print(" ".join(derived_set_names(cfg, args.names.split())))
    elif args.get:
        print(getattr(cfg, args.get))
    else:
        setup_logging()
        if args.dump_dir:
            write_instruction_sets(cfg, args.dump_dir)
        elif args.train_dir:
            write_train_instructions(cfg, args.train_dir)
        else:
            write_spoken_request_instruction(cfg, args.spoken_requests)
    return 0


if __name__ == "__main__":
    sys.exit(main())
