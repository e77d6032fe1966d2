"""Check a Kaldi data dir (sorted with LC_ALL=C, unique keys, matching key sets, utt2spk/spk2utt, segments,
transcripts).

Usage:
    python -m blspkd.bin.validate_data_dir data/train
    utils/validate_data_dir.sh data/train          # the Kaldi-named wrapper (also takes --no-text)

Prints every problem as '<file>:<line>: <what>. Fix: <how>' (at most --max_errors, then a count) and exits 1, or logs
"valid" and exits 0. Kaldi's --no-feats/--no-wav/--non-print/--no-spk-sort are accepted and ignored (feats.scp is
checked when present; this checker has no locale-dependent or printability rules to switch off).
"""
from __future__ import annotations

import argparse
import logging
import sys

from blspkd.bin._args import ArgumentParser, cli, opt
from blspkd.utils.logging import setup_logging


@cli
def main(argv: list[str] | None = None) -> int:
    p = ArgumentParser("python -m blspkd.bin.validate_data_dir", __doc__)
    p.add_argument("data_dir")
    p.add_argument(*opt("no_text"), dest="no_text", action="store_true", help="the dir has no text file (test data)")
    p.add_argument(*opt("max_errors"), dest="max_errors", type=int, default=50, help="(default: 50)")
    for kaldi_flag in ("--no-feats", "--no-wav", "--non-print", "--no-spk-sort"):
        p.add_argument(kaldi_flag, action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    setup_logging()
    from blspkd.data.kaldi_dir import DataDirError, validate_data_dir

    problems = validate_data_dir(args.data_dir, require_text=not args.no_text, max_errors=args.max_errors)
    if problems:
        print("\n".join(problems), file=sys.stderr)
        raise DataDirError(f"{args.data_dir}: {len(problems)} problem(s) found")
    logging.getLogger("blspkd").info("%s: valid data dir", args.data_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
