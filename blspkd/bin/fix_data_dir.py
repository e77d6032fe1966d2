"""Make a Kaldi data dir valid: sort, keep only utterances usable in every per-utterance file, regenerate spk2utt.

Usage:
    python -m blspkd.bin.fix_data_dir data/train
    utils/fix_data_dir.sh data/train               # the Kaldi-named wrapper

Originals are copied to data/train/.backup/ first. Drops (and counts, per reason) utterances missing from one of the
per-utterance files, with an empty transcript, conflicting duplicate lines, bad segment times or a segment whose
recording is not in wav.scp; drops blank/malformed lines and recordings no kept segment uses. Refuses (exit 1, naming
file:line) a file that is not UTF-8, since re-encoding needs a human decision.
"""
from __future__ import annotations

import argparse

from blspkd.bin._args import run_main
from blspkd.utils.logging import setup_logging


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m blspkd.bin.fix_data_dir", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("data_dir")
    args = p.parse_args(argv)
    setup_logging()
    from blspkd.data.data_dir_ops import fix_data_dir

    report = fix_data_dir(args.data_dir)
    return 0 if report.kept else 1


if __name__ == "__main__":
    run_main(main)
