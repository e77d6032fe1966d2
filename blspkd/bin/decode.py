"""Stage 6: decode a dump dir's features with a trained BLSP-KD model (transcription, continuation, translation, ...).

Usage:
    # everything in one process: writes exp/pretrain/decode_test/{hyp.txt,hyp.jsonl,ref.txt,decode_config.yaml,...}
    python -m blspkd.bin.decode --config conf/decode.yaml --model_dir exp/pretrain --dump_dir dump/test \\
        --out_dir exp/pretrain/decode_test
    # shard J of N (one job each, e.g. through ${decode_cmd} JOB=1:N), then merge in key order
    python -m blspkd.bin.decode --config conf/decode.yaml --model_dir exp/pretrain --dump_dir dump/test \\
        --out_dir exp/pretrain/decode_test --num_shards 4 --shard 2
    python -m blspkd.bin.decode --config conf/decode.yaml --model_dir exp/pretrain --dump_dir dump/test \\
        --out_dir exp/pretrain/decode_test --num_shards 4 --merge true
    # behaviour alignment: continuations from speech, scored against the LLM's text continuations
    python -m blspkd.bin.decode --model_dir exp/pretrain --dump_dir dump/test --task continuation \\
        --out_dir exp/pretrain/decode_test_continuation --max_new_tokens 48
    python -m blspkd.bin.decode --print_config        # every key with its default

Tasks: transcription | continuation | translation (--language German) | instruction (--instruction TEXT,
--instruction_file FILE, or the dump dir's per-utterance 'instruction' file) | spoken_instruction | plain.
Decoding: --num_beams N (1 = greedy), --max_new_tokens, --repetition_penalty, --no_repeat_ngram_size,
--length_penalty (beam search), --max_len_ratio R --max_len_offset C (transcription: at most ceil(R * N_hat + C) new
tokens per utterance, N_hat = CIF's speech-token count; 0 = off), --batch_size, --device auto|cpu|cuda.
See blspkd/decode.py for the outputs.
"""
from __future__ import annotations

import sys

from blspkd.bin._args import cli
from blspkd.decode import DecodeConfig, run
from blspkd.utils.config import parse_config
from blspkd.utils.logging import setup_logging

__all__ = ["DecodeConfig", "main"]


@cli
def main(argv: list[str] | None = None) -> int:
    cfg = parse_config(DecodeConfig, argv, prog="python -m blspkd.bin.decode", description=__doc__)
    setup_logging(cfg.log_level)
    run(cfg)
    return 0


if __name__ == "__main__":
    sys.exit(main())
