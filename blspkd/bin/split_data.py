"""Split a Kaldi data dir into N shards: <dir>/split<N>/<j> (by speaker) or <dir>/split<N>utt/<j> (--per_utt), j = 1..N.

Usage:
    python -m blspkd.bin.split_data data/train 8
    python -m blspkd.bin.split_data --per_utt data/train 8
    utils/split_data.sh [--per-utt] data/train 8                     # the Kaldi-named wrapper

Deterministic: contiguous blocks of sorted speakers (or utterances) with utterance counts as equal as possible. With
fewer speakers than shards the split falls back to utterances (logged).
"""
from __future__ import annotations

import sys

from blspkd.bin._args import ArgumentParser, cli, opt
from blspkd.utils.logging import setup_logging


@cli
def main(argv: list[str] | None = None) -> int:
    p = ArgumentParser("python -m blspkd.bin.split_data", __doc__)
    p.add_argument("data_dir")
    p.add_argument("num_shards", type=int)
    p.add_argument(*opt("per_utt"), dest="per_utt", action="store_true", help="split by utterance, not speaker")
    args = p.parse_args(argv)
    setup_logging()
    from blspkd.data.data_dir_ops import split_data_dir

    split_data_dir(args.data_dir, args.num_shards, by_speaker=not args.per_utt)
    return 0


if __name__ == "__main__":
    sys.exit(main())
