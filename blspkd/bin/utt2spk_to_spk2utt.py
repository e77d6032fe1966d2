"""Convert utt2spk to spk2utt (or, with --reverse, spk2utt to utt2spk), writing to standard output.

Usage:
    python -m blspkd.bin.utt2spk_to_spk2utt data/train/utt2spk > data/train/spk2utt
    python -m blspkd.bin.utt2spk_to_spk2utt --reverse data/train/spk2utt > data/train/utt2spk
    utils/utt2spk_to_spk2utt.sh data/train/utt2spk > data/train/spk2utt   # Kaldi-named wrappers, read stdin without
    utils/spk2utt_to_utt2spk.sh data/train/spk2utt > data/train/utt2spk   # a file argument

Output is sorted with LC_ALL=C; utterances of a speaker are listed in sorted order.
"""
from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from blspkd.bin._args import ArgumentParser, cli


@cli
def main(argv: list[str] | None = None) -> int:
    p = ArgumentParser("python -m blspkd.bin.utt2spk_to_spk2utt", __doc__)
    p.add_argument("input", nargs="?", default="-", help="input file (default: standard input)")
    p.add_argument("--reverse", action="store_true", help="spk2utt -> utt2spk")
    args = p.parse_args(argv)
    from blspkd.data.kaldi_dir import read_kv, sort_keys, spk2utt_to_utt2spk, utt2spk_to_spk2utt

    if args.input == "-":
        with tempfile.TemporaryDirectory() as tmp:  # read_kv works on files so its errors can name file:line
            path = Path(tmp) / ("spk2utt" if args.reverse else "utt2spk")
            path.write_bytes(sys.stdin.buffer.read())
            table = read_kv(path)
    else:
        table = read_kv(args.input)
    out = spk2utt_to_utt2spk(table) if args.reverse else utt2spk_to_spk2utt(table)
    sys.stdout.writelines(f"{k} {out[k]}\n" for k in sort_keys(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
