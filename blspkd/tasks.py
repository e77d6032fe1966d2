"""The task registry: what each task asks, which per-utterance file answers it, and how its output is scored.

One table read by training (``TaskConfig.kind``, blspkd/train/dataset.py), teacher data (stage 3, blspkd/teacher.py),
decoding (stage 6, blspkd/decode.py), inference (blspkd/bin/infer.py) and scoring (stage 7 of egs/TEMPLATE/blspkd.sh,
through ``python -m blspkd.bin.tasks``). Adding a task is one ``register(Task(...))`` here (plus its tests).

A task gives an utterance its instruction in one of three ways (``utterance_instruction``):

    none      the fixed instruction (``instruction``, or the caller's override); ``{language}``-style fields are filled
              from the caller's values
    optional  the caller's override, else the fixed instruction, else the dump dir's per-utterance ``instruction`` file
              (spoken instructions: the speech itself is the request, a text instruction may precede it)
    required  the caller's override, else the per-utterance ``instruction`` file, which must cover every utterance

``response`` names the per-utterance file with the training target (None: no response, input-KD only), ``reference``
the file decoding is scored against. ``teacher``: stage 3 writes ``response`` with the frozen LLM's answer to the
transcript framed exactly as the model is decoded (behaviour alignment). ``metrics`` are blspkd.bin.score metric
names; ``partial_references``: the reference file may lack some utterances (e.g. refusals filtered in stage 3).
"""
from __future__ import annotations

import string
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from blspkd.utils.config import ConfigError


class TaskError(ConfigError):
    """A task name, instruction field or per-utterance instruction the user has to fix (the message says how)."""


@dataclass(frozen=True)
class Task:
    name: str
    instruction: str | None
    response: str | None
    reference: str
    metrics: tuple[str, ...]
    utterance_instruction: Literal["none", "optional", "required"] = "none"
    teacher: bool = False
    partial_references: bool = False
    description: str = ""


TASKS: dict[str, Task] = {}


def register(task: Task) -> Task:
    if task.name in TASKS:
        raise TaskError(f"task '{task.name}' is already registered")
    if task.teacher and task.response is None:
        raise TaskError(f"task '{task.name}': teacher data needs a response file")
    TASKS[task.name] = task
    return task


register(Task("plain", None, None, "text", ("wer", "cer", "bleu", "chrf"),
              description="speech only, the model's default instruction; no response (input-KD pretraining)"))
register(Task("transcription", "Repeat the following sentence exactly.", "text", "text", ("wer", "cer", "bleu", "chrf"),
              description="response = the transcript"))
register(Task("continuation", "Continue the following text in a coherent style: ", "continuation", "continuation",
              ("align",), teacher=True, partial_references=True,
              description="response = the LLM's continuation of the transcript (BLSP's behaviour alignment)"))
register(Task("translation", "Translate the following speech into {language}.", "translation", "translation",
              ("bleu", "chrf"), partial_references=True, description="response = the translation file"))
register(Task("spoken_instruction", None, "response", "response", ("align", "exact"), utterance_instruction="optional",
              teacher=True, partial_references=True,
              description="the speech is the request (optionally after the per-utterance instruction); "
              "response = the LLM's answer to its transcript"))
register(Task("instruction", None, "response", "response", ("align", "exact"), utterance_instruction="required",
              teacher=True, partial_references=True,
              description="a text instruction (given, or per utterance) about the speech; response = the LLM's "
              "answer over the transcript"))


def truncated_file(response: str) -> str:
    """The per-utterance ``<key> true|false`` file saying which teacher responses stopped at max_new_tokens."""
    return f"{response}.truncated"


def get_task(name: str) -> Task:
    if name not in TASKS:
        raise TaskError(f"unknown task '{name}'; choose from {', '.join(TASKS)}")
    return TASKS[name]


def fill_fields(task: Task, text: str, fields: Mapping[str, str | None]) -> str:
    """``text`` with its ``{name}`` fields filled from ``fields`` (an unset field is an error naming the key)."""
    names = [name for _, name, _, _ in string.Formatter().parse(text) if name]
    missing = [n for n in names if not fields.get(n)]
    if missing:
        raise TaskError(f"task '{task.name}': its instruction names {{{missing[0]}}}; set the task's "
                        f"'{missing[0]}' key")
    return text.format(**{n: fields[n] for n in names}) if names else text


def fixed_instruction(name: str, instruction: str | None = None, **fields: str | None) -> str | None:
    """The one instruction every utterance of task ``name`` gets (``instruction`` overrides the task's own), or None
    when it comes from the utterances (``utterance_instruction`` optional/required without an override)."""
    task = get_task(name)
    text = instruction or (task.instruction if task.utterance_instruction != "required" else None)
    return fill_fields(task, text, fields) if text else None


def utterance_instructions(name: str, keys: list[str], per_utterance: Mapping[str, str] | None, where: str,
                           instruction: str | None = None, **fields: str | None) -> dict[str, str | None]:
    """The instruction of each of ``keys`` for task ``name`` (None: the model's default instruction).

    ``per_utterance``: the dump dir's ``instruction`` file (None if it has none), ``where`` its path for messages."""
    task = get_task(name)
    fixed = fixed_instruction(name, instruction, **fields)
    if task.utterance_instruction == "none" or fixed is not None:
        return dict.fromkeys(keys, fixed)
    per_utterance = per_utterance or {}
    if task.utterance_instruction == "required":
        if not per_utterance:
            raise TaskError(f"task '{name}' needs an instruction: give one, or a per-utterance file {where} "
                            "(not found)")
        missing = [k for k in keys if not per_utterance.get(k, "").strip()]
        if missing:
            raise TaskError(f"{where}: no instruction for {len(missing)} of {len(keys)} utterances (first: "
                            f"{missing[0]}); add them or give one instruction for all")
    return {k: per_utterance.get(k) or None for k in keys}


def score_options(name: str) -> list[str]:
    """The blspkd.bin.score options of task ``name`` (stage 7)."""
    task = get_task(name)
    return ["--metric", ",".join(task.metrics)] + (["--allow_missing"] if task.partial_references else [])


def table() -> str:
    """The registry as a text table (``python -m blspkd.bin.tasks list``)."""
    rows = [("task", "instruction", "response", "reference", "metrics", "teacher")]
    for t in TASKS.values():
        instruction = (repr(t.instruction) if t.instruction else "(the model's default)"
                       if t.utterance_instruction == "none" else f"({t.utterance_instruction} per utterance)")
        rows.append((t.name, instruction, t.response or "-", t.reference, ",".join(t.metrics), "yes" if t.teacher
                     else "no"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows) + "\n"
