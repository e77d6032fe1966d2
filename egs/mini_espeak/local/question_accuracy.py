"""Accuracy on the spoken questions: the share of answers that contain an accepted answer (local/questions.py).

Usage:
    # the model's answers to the speech (stage 6's decode dir of test_questions; its name depends on the pass)
    python local/question_accuracy.py --hyp exp/finetune/decode_test_questions_spoken_instruction/hyp.txt \\
        --answers data/test_questions/answers --out exp/finetune/decode_test_questions_spoken_instruction/accuracy.json
    # the text-input ceiling: the LLM's answers to the transcripts (stage 3)
    python local/question_accuracy.py --hyp dump/test_questions/response --answers data/test_questions/answers

``--hyp``: ``<uttid> <answer>`` lines (Kaldi style); ``--answers``: ``<uttid> <a1>|<a2>...``
(local/make_questions_set.py writes it into data/test_questions). Every utterance of ``--answers`` is scored: one
without a hypothesis (a refusal stage 3 dropped, an utterance the decoder skipped) counts as wrong and as ``missing``.
A hypothesis for an utterance that has no answers is an error (the two files are of different sets). Prints, and with
``--out`` writes as JSON: scored, correct, missing, accuracy (correct / scored).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from questions import is_correct, parse_answers

from blspkd.data.kaldi_dir import DataDirError, read_kv


def question_accuracy(hyps: dict[str, str], answers: dict[str, tuple[str, ...]]) -> dict[str, float | int]:
    correct = sum(is_correct(hyps[k], a) for k, a in answers.items() if k in hyps)
    missing = sum(k not in hyps for k in answers)
    return {"scored": len(answers), "correct": correct, "missing": missing,
            "accuracy": correct / len(answers) if answers else 0.0}


def read_answers(path: str | Path) -> dict[str, tuple[str, ...]]:
    answers = {k: parse_answers(v) for k, v in read_kv(path).items()}
    empty = [k for k, a in answers.items() if not a]
    if empty:
        raise DataDirError(f"{path}: {len(empty)} utterance(s) without accepted answers (first: {empty[0]}). Fix: "
                           "write '<uttid> <a1>|<a2>' lines (local/make_questions_set.py does)")
    return answers


def main(argv: list[str] | None = None) -> dict[str, float | int]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hyp", required=True, help="<uttid> <answer> lines")
    parser.add_argument("--answers", required=True, help="<uttid> <a1>|<a2> lines")
    parser.add_argument("--out", help="write the figures here as JSON")
    args = parser.parse_args(argv)
    hyps, answers = read_kv(args.hyp), read_answers(args.answers)
    extra = [k for k in hyps if k not in answers]
    if extra:
        sys.exit(f"{args.hyp}: {len(extra)} hypothesis(es) for utterances not in {args.answers} (first: {extra[0]}); "
                 "are they of the same set?")
    result = question_accuracy(hyps, answers)
    print(f"{args.hyp}: {result['correct']} of {result['scored']} correct ({100 * result['accuracy']:.1f}%), "
          f"{result['missing']} without a hypothesis")
    if args.out:
        Path(args.out).write_text(json.dumps({"hyp": args.hyp, "answers": args.answers, **result}, indent=1) + "\n",
                                  encoding="utf-8")
    return result


if __name__ == "__main__":
    main()
