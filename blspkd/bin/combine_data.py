"""Combine several Kaldi data dirs into one.

Usage:
    python -m blspkd.bin.combine_data data/train_all data/train_a data/train_b [...]
    utils/combine_data.sh data/train_all data/train_a data/train_b     # the Kaldi-named wrapper

A key found in two sources is an error naming both files (recordings and speaker-file entries may repeat with the same
value). Files only some sources have are skipped with a warning; segments must be in all sources or none.
"""
from __future__ import annotations

import argparse
import sys

from blspkd.bin._args import ArgumentParser, cli
from blspkd.utils.logging import setup_logging


@cli
def main(argv: list[str] | None = None) -> int:
    p = ArgumentParser("python -m blspkd.bin.combine_data", __doc__)
    p.add_argument("dst")
    p.add_argument("srcs", nargs="+")
    p.add_argument("--extra-files", "--extra_files", default="", help=argparse.SUPPRESS)  # Kaldi option: all are kept
    args = p.parse_args(argv)
    setup_logging()
    from blspkd.data.data_dir_ops import combine_data

    combine_data(args.dst, args.srcs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
