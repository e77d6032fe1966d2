"""Keep the spoken-question candidates that the recipe's LLM answers correctly as TEXT, framed as the model is decoded.

Usage (in egs/mini_espeak after stage 0; the command that wrote local/questions_kept.tsv):
    python local/select_questions.py --llm downloads/SmolLM2-135M-Instruct \\
        --model_configs conf/warmstart.yaml conf/pretrain.yaml conf/finetune.yaml
    # every option with its default:
    python local/select_questions.py --questions local/questions.tsv --out local/questions_kept.tsv \\
        --work_dir exp/select_questions --llm downloads/SmolLM2-135M-Instruct \\
        --model_configs conf/warmstart.yaml conf/pretrain.yaml conf/finetune.yaml \\
        --instruction_config conf/instructions.yaml \\
        --instructions none "Answer the following question in a few words." \\
            "Answer the following question in one word." \\
        --batch_size 16 --min_kept 100 --device auto

Each framing (``none``: the question alone; else the text instruction placed before it, as a per-utterance
``instruction`` before the speech) is answered by the project's teacher (blspkd/teacher.py, task
``spoken_instruction``): the system prompt and instruction separator of ``--model_configs`` (the training configs,
in init_from order), the chat template's framing (blspkd/data/prompts.py ChatFraming), greedy, at most the
``max_new_tokens`` of ``--instruction_config`` (the limit stage 3 and stage 6 answer spoken requests with; or
``--max_new_tokens``), in ``<work_dir>/framing<i>/`` (resumable, as stage 3 is). An answer is correct by
local/questions.py ``is_correct``; a refusal the teacher drops counts as wrong. The framing with the most correct
answers wins (a tie: the earlier one); its correct questions go to ``--out`` under a header giving the model, the
framing and the counts of every framing, which are also printed and written to ``<work_dir>/selection.json``. The
chosen instruction is what ``spoken_request_instruction`` of ``--instruction_config`` must say (the script says so
when it does not). Fewer than ``--min_kept`` correct is an error: write more candidates.
"""
from __future__ import annotations

import argparse
import json
import logging
import shlex
import sys
from pathlib import Path

from questions import Question, is_correct, read_questions, write_questions

from blspkd import tasks
from blspkd.data.kaldi_dir import read_kv, write_kv
from blspkd.instruction_eval import load_config
from blspkd.teacher import TeacherConfig, framing_settings, merge, run_shard
from blspkd.utils.logging import setup_logging

logger = logging.getLogger("blspkd")

TASK = "spoken_instruction"  # the speech (here its transcript, the question) is the request
NO_INSTRUCTION = "none"
DEFAULT_INSTRUCTIONS = [NO_INSTRUCTION, "Answer the following question in a few words.",
                        "Answer the following question in one word."]


def teacher_answers(questions: list[Question], instruction: str | None, work_dir: Path, args) -> dict[str, str]:
    """The LLM's answer to every question (qid -> text; refusals left out), through stage 3's teacher code."""
    work_dir.mkdir(parents=True, exist_ok=True)
    write_kv(work_dir / "text", {q.qid: q.text for q in questions})
    cfg = TeacherConfig(dump_dir=str(work_dir), llm=args.llm, task=TASK, instruction=instruction,
                        model_configs=list(args.model_configs), max_new_tokens=args.max_new_tokens,
                        batch_size=args.batch_size, device=args.device)
    run_shard(cfg)
    merge(cfg)
    return read_kv(work_dir / tasks.get_task(TASK).response)


def correct_ids(questions: list[Question], answers: dict[str, str]) -> list[str]:
    return [q.qid for q in questions if q.qid in answers and is_correct(answers[q.qid], q.answers)]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--questions", default="local/questions.tsv", help="candidates (default: %(default)s)")
    parser.add_argument("--out", default="local/questions_kept.tsv", help="kept questions (default: %(default)s)")
    parser.add_argument("--work_dir", default="exp/select_questions", help="teacher outputs (default: %(default)s)")
    parser.add_argument("--llm", default="downloads/SmolLM2-135M-Instruct")
    parser.add_argument("--model_configs", nargs="+",
                        default=["conf/warmstart.yaml", "conf/pretrain.yaml", "conf/finetune.yaml"],
                        help="training configs whose model.system_prompt/instruction_separator frame the prompt")
    parser.add_argument("--instructions", nargs="+", default=DEFAULT_INSTRUCTIONS,
                        help=f"framings to compare; '{NO_INSTRUCTION}': the question alone")
    parser.add_argument("--instruction_config", default="conf/instructions.yaml",
                        help="its max_new_tokens and spoken_request_instruction (default: %(default)s)")
    parser.add_argument("--max_new_tokens", type=int, help="(default: that of --instruction_config)")
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--min_kept", type=int, default=100)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args(argv)
    setup_logging()
    questions = read_questions(args.questions)
    instruction_cfg = load_config(args.instruction_config)
    if args.max_new_tokens is None:
        args.max_new_tokens = instruction_cfg.max_new_tokens
    system_prompt, separator = framing_settings(TeacherConfig(model_configs=list(args.model_configs)))
    work_root = Path(args.work_dir)

    results = []
    for i, text in enumerate(args.instructions):
        instruction = None if text == NO_INSTRUCTION else text
        answers = teacher_answers(questions, instruction, work_root / f"framing{i}", args)
        correct = correct_ids(questions, answers)
        results.append({"instruction": instruction, "correct": len(correct), "answered": len(answers),
                        "candidates": len(questions), "correct_ids": correct})
        logger.info("framing %d (instruction %r): %d of %d correct (%d answered, the rest refused)", i, instruction,
                    len(correct), len(questions), len(answers))
    best = max(range(len(results)), key=lambda i: (results[i]["correct"], -i))
    chosen = results[best]
    summary = [f"instruction {r['instruction']!r}: {r['correct']} of {r['candidates']} correct" for r in results]
    print("\n".join(summary))
    print(f"chosen: instruction {chosen['instruction']!r}, {chosen['correct']} questions kept")
    (work_root / "selection.json").write_text(json.dumps(
        {"llm": args.llm, "model_configs": args.model_configs, "system_prompt": system_prompt,
         "separator": separator, "max_new_tokens": args.max_new_tokens, "chosen": best, "framings": results},
        indent=1) + "\n", encoding="utf-8")
    if chosen["correct"] < args.min_kept:
        sys.exit(f"only {chosen['correct']} questions answered correctly (--min_kept {args.min_kept}): add candidates "
                 f"to {args.questions}")
    keep = set(chosen["correct_ids"])
    kept = [q for q in questions if q.qid in keep]
    write_questions(args.out, kept, [
        f"Spoken-questions test set of the mini recipe: the {len(kept)} questions of {args.questions} that "
        f"{Path(args.llm).name} answers correctly as text (local/questions.py is_correct).",
        f"Written by: python local/select_questions.py {shlex.join(sys.argv[1:] if argv is None else argv)}",
        f"Framing: system prompt {system_prompt!r}, separator {separator!r}, greedy, max_new_tokens "
        f"{args.max_new_tokens}; chosen instruction {chosen['instruction']!r} (spoken_request_instruction of "
        f"{args.instruction_config}).",
        *summary,
    ])
    logger.info("wrote %s: %d questions", args.out, len(kept))
    if chosen["instruction"] != instruction_cfg.spoken_request_instruction:
        logger.warning("%s says spoken_request_instruction: %r; set it to %r, the framing these questions were "
                       "selected with", args.instruction_config, instruction_cfg.spoken_request_instruction,
                       chosen["instruction"])


if __name__ == "__main__":
    main()
