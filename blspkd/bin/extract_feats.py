"""Whisper log-mel features of a Kaldi data dir (recipe stage 2), sharded, resumable, then merged into a dump dir.

Usage:
    # shard J of N (run for J = 1..N, e.g. through ${train_cmd} JOB=1:N ... --shard JOB)
    python -m blspkd.bin.extract_feats --data_dir data/train --out_dir dump/train \\
        --feature_extractor downloads/whisper-tiny.en --num_shards 4 --shard 1 [--min_duration 0.5 --max_duration 30]
    # after all shards: the complete dump dir (feats.scp, utt2num_frames, data-dir files of kept utterances, .completed)
    python -m blspkd.bin.extract_feats --data_dir data/train --out_dir dump/train --num_shards 4 --merge true

Features: float32 (frames x n_mels) Whisper log-mel at 100 frames/s, not padded to 30 s, identical to transformers'
WhisperFeatureExtractor on the unpadded signal; n_mels (80/128) comes from <feature_extractor>/preprocessor_config.json.
Shard J (the J-th contiguous block of the sorted utterance ids; blspkd/utils/shards.py) goes to
<out_dir>/shards/{feats.J.ark,feats.J.scp,utt2num_frames.J,dropped.J,.completed.J}; a shard whose .completed.J exists
with the same settings is skipped, so re-running all jobs after a killed one redoes only the missing shards.
Utterances outside [min_duration, max_duration] (default max: the extractor's chunk_length, 30 s, the most Whisper's
encoder takes) are dropped and counted per reason.
With --feats_type raw the shards hold the utterances as 16 kHz mono 16-bit FLAC (or WAV) files instead
(<out_dir>/shards/audio.J/, wav.J.scp, utt2num_samples.J) and the dump dir gets wav.scp and utt2num_samples; the model
computes the log-mel on its device (blspkd/data/audio_dump.py). Options accept '-' or '_' (--out-dir = --out_dir).
"""
from __future__ import annotations

import argparse
import sys

from blspkd.bin._args import ArgumentParser, cli, opt
from blspkd.utils.logging import setup_logging


def _bool(value: str) -> bool:
    if value not in ("true", "false"):
        raise argparse.ArgumentTypeError(f"expected true or false, got '{value}'")
    return value == "true"


def get_parser() -> argparse.ArgumentParser:
    p = ArgumentParser("python -m blspkd.bin.extract_feats", __doc__)
    p.add_argument(*opt("data_dir"), dest="data_dir", required=True,
                   help="Kaldi data dir (wav.scp, text, utt2spk, ...)")
    p.add_argument(*opt("out_dir"), dest="out_dir", required=True, help="dump dir to write (e.g. dump/train)")
    p.add_argument(*opt("feature_extractor"), dest="feature_extractor",
                   help="HF model dir with preprocessor_config.json (required unless --merge)")
    p.add_argument(*opt("num_shards"), dest="num_shards", type=int, required=True, help="number of shards N")
    p.add_argument("--shard", type=int, help="which shard to compute, 1..N (required unless --merge)")
    p.add_argument("--merge", type=_bool, default=False,
                   help="true: merge the N done shards into the complete dump dir (default: false)")
    p.add_argument(*opt("min_duration"), dest="min_duration", type=float, default=None,
                   help="drop utterances shorter than this many seconds (default: none)")
    p.add_argument(*opt("max_duration"), dest="max_duration", type=float, default=None,
                   help="drop utterances longer than this many seconds (default: the extractor's chunk_length, 30)")
    p.add_argument(*opt("skip_bad_audio"), dest="skip_bad_audio", type=_bool, default=False,
                   help="true: skip unreadable audio with a logged count instead of failing (default: false)")
    p.add_argument(*opt("feats_type"), dest="feats_type", choices=["fbank", "raw"], default="fbank",
                   help="fbank: dump the log-mel features; raw: dump 16 kHz mono audio, the log-mel is computed on the "
                   "training/decoding device (default: fbank)")
    p.add_argument(*opt("audio_format"), dest="audio_format", choices=["flac", "wav"], default="flac",
                   help="file format of the raw audio (--feats_type raw; 16-bit PCM; default: flac)")
    p.add_argument(*opt("num_threads"), dest="num_threads", type=int, default=1, help="torch threads (default: 1)")
    p.add_argument(*opt("log_level"), dest="log_level", default="INFO", help="(default: INFO)")
    return p


@cli
def main(argv: list[str] | None = None) -> int:
    args = get_parser().parse_args(argv)
    setup_logging(args.log_level)
    from blspkd.data.feature_dump import extract_shard, merge_shards

    if args.merge:
        merge_shards(args.data_dir, args.out_dir, args.num_shards)
        return 0
    if args.shard is None or args.feature_extractor is None:
        get_parser().error("--shard and --feature_extractor are required unless --merge true is given")
    extract_shard(
        args.data_dir, args.out_dir, args.feature_extractor, args.num_shards, args.shard,
        min_duration=args.min_duration, max_duration=args.max_duration, skip_bad_audio=args.skip_bad_audio,
        num_threads=args.num_threads, feats_type=args.feats_type, audio_format=args.audio_format,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
