"""Make a Kaldi data dir valid: sort, keep only utterances usable in every per-utterance file, regenerate spk2utt.

Usage:
    python -m blspkd.bin.fix_data_dir data/train
    utils/fix_data_dir.sh data/train               # the Kaldi-named wrapper

Originals are copied to data/train/.backup/ first. Drops (and counts, per reason) utterances missing from one of the
per-utterance files, with an empty transcript, conflicting duplicate lines, bad segment times or a segment whose
recording is not in wav.scp; drops blank/malformed lines and recordings no kept segment uses. Refuses (exit 1, naming
file:line) a file that is not UTF-8 or a line with an invisible or control character, since those need a human
decision, and changes nothing when no utterance would remain.
"""
from __future__ import annotations

import sys

from blspkd.bin._args import ArgumentParser, cli
from blspkd.utils.logging import setup_logging


@cli
def main(argv: list[str] | None = None) -> int:
    p = ArgumentParser("python -m blspkd.bin.fix_data_dir", __doc__)
    p.add_argument("data_dir")
    args = p.parse_args(argv)
    setup_logging()
    from blspkd.data.data_dir_ops import fix_data_dir

    fix_data_dir(args.data_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
