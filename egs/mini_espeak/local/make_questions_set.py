"""Synthesise the spoken-questions test set with espeak-ng, read by voices never used in training (seeded).

Usage (local/data.sh runs it after the corpus, with the corpus's --seed):
    python local/make_questions_set.py --questions local/questions_kept.tsv --data_dir data/test_questions \\
        --wav_dir downloads/espeak_wav_questions [--seed 0 --nj 2]

Each question of ``--questions`` (the kept file of local/select_questions.py) is one utterance, voiced as the test set
of local/make_espeak_corpus.py is: an English accent of espeak-ng with one of the test variants of
``split_variants(seed)`` (variants that never occur in train or dev for the same seed), a random speed and pitch, the
same synthesis (16 kHz, peak at -3 dBFS). Utterance id = speaker + ``-questions`` + index in the file's order.

Output: DATA_DIR/{wav.scp,text,utt2spk,spk2utt}, DATA_DIR/answers (``<uttid> <a1>|<a2>``, the accepted answers that
local/question_accuracy.py scores against), the voice, speed and pitch of every utterance in
DATA_DIR/../local/espeak_test_questions.tsv, the wavs under WAV_DIR/test_questions/. Existing wavs of the same plan are
reused (make_espeak_corpus.synthesize_plan). The text placed before the speech, if any, is not written here: stage 3
writes it into the dump dir from ``spoken_request_instruction`` of conf/instructions.yaml (blspkd/instruction_eval.py).
"""
from __future__ import annotations

import argparse
import logging
import os
import random
from pathlib import Path

import make_espeak_corpus as corpus
from questions import Question, read_questions

from blspkd.data.kaldi_dir import write_kv
from blspkd.utils.logging import setup_logging

logger = logging.getLogger("blspkd")

SET = "test_questions"


def plan_questions(questions: list[Question], seed: int) -> list[corpus.Utterance]:
    """One utterance per question, each read by a test-only voice (accent + variant) at a random speed and pitch."""
    rng = random.Random(f"questions-{seed}")
    _, test_variants = corpus.split_variants(seed)
    return [corpus.draw_utterance(rng, test_variants, f"questions{i:05d}", q.text) for i, q in enumerate(questions)]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--questions", default="local/questions_kept.tsv")
    parser.add_argument("--data_dir", default=f"data/{SET}")
    parser.add_argument("--wav_dir", default="downloads/espeak_wav_questions",
                        help=f"wavs go to WAV_DIR/{SET} (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="the corpus's seed: it chooses the test-only variants")
    parser.add_argument("--nj", type=int, default=os.cpu_count() or 1, help="parallel synthesis processes")
    parser.add_argument("--num_questions", type=int, default=0,
                        help="the first N questions of --questions (default: 0 = all; the tests use a few)")
    args = parser.parse_args(argv)
    setup_logging()
    if args.nj < 1:
        parser.error(f"--nj must be at least 1, got {args.nj}")
    if args.num_questions < 0:
        parser.error(f"--num_questions must be 0 (all) or more, got {args.num_questions}")
    corpus.require_tools()
    questions = read_questions(args.questions)
    questions = questions[: args.num_questions or None]
    utts = plan_questions(questions, args.seed)
    logger.info("%d questions from %s", len(utts), args.questions)

    wav_root = Path(args.wav_dir).resolve()
    corpus.synthesize_plan({SET: utts}, wav_root, args.nj)
    data_dir = Path(args.data_dir)
    corpus.write_data_dir(data_dir, utts, wav_root / SET)
    write_kv(data_dir / "answers", {u.utt_id: "|".join(q.answers) for u, q in zip(utts, questions)})
    corpus.write_plan(data_dir.parent / "local" / f"espeak_{SET}.tsv", utts)


if __name__ == "__main__":
    main()
