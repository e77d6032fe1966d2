"""Copy a subset of a Kaldi data dir's utterances (with all its per-utterance files) to a new dir.

Usage:
    python -m blspkd.bin.subset_data_dir --first 100 data/train data/train_100
    python -m blspkd.bin.subset_data_dir --last 100 data/train data/train_last100
    python -m blspkd.bin.subset_data_dir --random 500 --seed 1 data/train data/train_500
    python -m blspkd.bin.subset_data_dir --utt_list ids.txt data/train data/train_sub   # first column = utterance id
    python -m blspkd.bin.subset_data_dir --spk_list spk.txt data/train data/train_spk   # first column = speaker id
    utils/subset_data_dir.sh --first data/train 100 data/train_100   # Kaldi argument order (see the wrapper's header)

Utterances are taken in LC_ALL=C order; --random is reproducible for a given --seed. Listed ids that the source lacks
are counted in a warning.
"""
from __future__ import annotations

import sys

from blspkd.bin._args import ArgumentParser, cli, opt
from blspkd.utils.logging import setup_logging


def _first_column(path: str) -> list[str]:
    from blspkd.data.kaldi_dir import DataDirError, parse_kv

    kv = parse_kv(path)
    bad = [(n, msg) for n, msg in kv.problems if n and msg != "blank line"]
    if bad:
        raise DataDirError(f"{path}:{bad[0][0]}: {bad[0][1]} ({len(bad)} such line(s))")
    return kv.keys()


@cli
def main(argv: list[str] | None = None) -> int:
    p = ArgumentParser("python -m blspkd.bin.subset_data_dir", __doc__)
    p.add_argument("src")
    p.add_argument("dst")
    sel = p.add_mutually_exclusive_group(required=True)
    sel.add_argument("--first", type=int, metavar="N")
    sel.add_argument("--last", type=int, metavar="N")
    sel.add_argument("--random", type=int, metavar="N")
    sel.add_argument(*opt("utt_list"), dest="utt_list", metavar="FILE")
    sel.add_argument(*opt("spk_list"), dest="spk_list", metavar="FILE")
    p.add_argument("--seed", type=int, default=0, help="seed of --random (default: 0)")
    args = p.parse_args(argv)
    setup_logging()
    from blspkd.data.data_dir_ops import subset_data_dir

    subset_data_dir(
        args.src, args.dst, first=args.first, last=args.last, random_n=args.random, seed=args.seed,
        utt_list=_first_column(args.utt_list) if args.utt_list else None,
        spk_list=_first_column(args.spk_list) if args.spk_list else None,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
