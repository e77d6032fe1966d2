"""The spoken-questions test set of the mini recipe: the question files and the rule that says an answer is correct.

Question files (``local/questions.tsv``, the candidates written for this project; ``local/questions_kept.tsv``, those
the LLM answers correctly as text, written by local/select_questions.py) have one question a line, tab-separated:

    <qid> <question> <answers>

``answers`` are the accepted short answers separated by ``|`` (``New Delhi|Delhi``). Lines starting with ``#`` are
comments (the kept file's header says how it was selected).

Correctness (``is_correct``): the answer, lower-cased with every run of characters other than a-z and 0-9 made one
space, contains one of the accepted answers (normalised alike) as a run of whole words: "The capital of France is
Paris." answers "Paris"; "Parisian food" does not. The selection, local/question_accuracy.py and the tests use this
one function.
"""
from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

MIN_WORDS, MAX_WORDS = 4, 12


@dataclass(frozen=True)
class Question:
    qid: str
    text: str
    answers: tuple[str, ...]


def words(text: str) -> list[str]:
    """``text`` lower-cased, split into runs of a-z/0-9 (punctuation and other characters separate words)."""
    return re.sub(r"[^a-z0-9]+", " ", text.lower()).split()


def contains_answer(text: str, answer: str) -> bool:
    """Whether the words of ``answer`` occur in ``text`` as a contiguous run of whole words."""
    have, want = words(text), words(answer)
    n = len(want)
    return n > 0 and any(have[i:i + n] == want for i in range(len(have) - n + 1))


def is_correct(response: str, answers: Iterable[str]) -> bool:
    return any(contains_answer(response, a) for a in answers)


def parse_answers(value: str) -> tuple[str, ...]:
    return tuple(a.strip() for a in value.split("|") if a.strip())


def read_questions(path: str | Path) -> list[Question]:
    """The questions of a question file, checked: a bad line raises ValueError naming ``path:line`` and the fix."""
    path = Path(path)
    out: list[Question] = []
    seen: dict[str, int] = {}
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip() or line.startswith("#"):
            continue
        where = f"{path}:{lineno}"
        fields = line.split("\t")
        if len(fields) != 3:
            raise ValueError(f"{where}: expected '<qid>\\t<question>\\t<answers>', got {len(fields)} tab-separated "
                             "fields. Fix: separate the three fields by single tabs")
        qid, text, answers = fields[0], fields[1].strip(), parse_answers(fields[2])
        problem = _problem(qid, text, answers)
        if problem:
            raise ValueError(f"{where}: {problem}")
        if qid in seen:
            raise ValueError(f"{where}: question id {qid} is also on line {seen[qid]}. Fix: give it a new id")
        seen[qid] = lineno
        out.append(Question(qid, text, answers))
    if not out:
        raise ValueError(f"{path}: no questions. Fix: write '<qid>\\t<question>\\t<answers>' lines")
    return out


def _problem(qid: str, text: str, answers: tuple[str, ...]) -> str:
    if not re.fullmatch(r"[a-z0-9]+", qid):
        return f"question id {qid!r} must be lower-case letters and digits (it is the key of data-dir style files)"
    if not (text.isascii() and text.endswith("?") and MIN_WORDS <= len(text.split()) <= MAX_WORDS):
        return (f"question {text!r} must be plain ASCII, {MIN_WORDS}-{MAX_WORDS} words, ending with '?'. Fix: "
                "reword it")
    if not answers or not all(words(a) for a in answers):
        return f"question {qid} has no accepted answer (or one without letters/digits). Fix: list them as a|b"
    echoed = [a for a in answers if contains_answer(text, a)]
    if echoed:
        return (f"accepted answer {echoed[0]!r} occurs in question {qid} itself: a model repeating the question "
                "would score. Fix: reword the question or drop that answer")
    return ""


def write_questions(path: str | Path, questions: list[Question], header: list[str]) -> None:
    """A question file: ``header`` lines as ``#`` comments, then one line per question."""
    lines = [f"# {h}" for h in header]
    for q in questions:
        lines.append("\t".join([q.qid, q.text, "|".join(q.answers)]))
    Path(path).write_text("\n".join(lines) + "\n", encoding="utf-8")
