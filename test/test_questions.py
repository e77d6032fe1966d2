"""The mini recipe's spoken questions (egs/mini_espeak/local): the question files, the correctness rule, the accuracy
script, the voices of test_questions (never used in training), its synthesis and the selection by the real LLM."""
from __future__ import annotations

import json
import re
import shutil
import sys
from pathlib import Path

import pytest
from fixtures.recipe import REPO

from blspkd.data.kaldi_dir import read_kv, validate_data_dir, write_kv

MINI = REPO / "egs" / "mini_espeak"
sys.path.insert(0, str(MINI / "local"))
import fortune_sentences  # noqa: E402
import make_espeak_corpus  # noqa: E402
import make_questions_set  # noqa: E402
import question_accuracy  # noqa: E402
import questions  # noqa: E402
import select_questions  # noqa: E402

CANDIDATES = MINI / "local" / "questions.tsv"
KEPT = MINI / "local" / "questions_kept.tsv"
needs_espeak = pytest.mark.skipif(shutil.which("espeak-ng") is None or shutil.which("sox") is None,
                                  reason="espeak-ng or sox is not installed (apt-get install espeak-ng sox)")


def test_question_files_parse_and_kept_is_a_subset():
    candidates = questions.read_questions(CANDIDATES)
    kept = questions.read_questions(KEPT)
    assert len(candidates) >= 250 and len(kept) >= 100
    by_id = {q.qid: q for q in candidates}
    assert len(by_id) == len(candidates) and len({q.text for q in candidates}) == len(candidates)
    for q in kept:  # read_questions already refused empty answers, bad wording and answers echoed by the question
        assert q.answers and (by_id[q.qid].text, by_id[q.qid].answers) == (q.text, q.answers)
    assert [q.qid for q in kept] == sorted(q.qid for q in kept)


@pytest.mark.skipif(not Path(fortune_sentences.DEFAULT_FORTUNES_DIR).is_dir(),
                    reason="Debian's fortunes package is not installed (apt-get install fortunes)")
def test_no_question_is_a_corpus_sentence():
    # Every train/dev/test sentence is one of these (make_espeak_corpus.plan_corpus draws from them).
    sentences = {" ".join(questions.words(s)) for s in fortune_sentences.load_sentences()}
    clash = [q.text for q in questions.read_questions(CANDIDATES) if " ".join(questions.words(q.text)) in sentences]
    assert clash == []


@pytest.mark.parametrize("line, message", [
    ("q1\tWhat is the capital of France?", "expected '<qid>\\t<question>\\t<answers>', got 2"),
    ("q1\tWhat is the capital of France?\t|", "question q1 has no accepted answer"),
    ("q1\tCapital of France?\tParis", "must be plain ASCII, 4-12 words, ending with '?'"),
    ("q1\tWhat is the capital of France\tParis", "must be plain ASCII, 4-12 words, ending with '?'"),
    ("Q-1\tWhat is the capital of France?\tParis", "question id 'Q-1' must be lower-case letters and digits"),
    ("q1\tWhat is the capital of Mexico?\tMexico City|Mexico", "accepted answer 'Mexico' occurs in question q1"),
])
def test_question_file_errors_name_the_line(tmp_path, line, message):
    path = tmp_path / "q.tsv"
    path.write_text(f"# a comment\nq0\tWhat colour is fresh snow?\twhite\n{line}\n")
    with pytest.raises(ValueError, match=re.escape(f"{path}:3: ") + ".*" + re.escape(message)):
        questions.read_questions(path)


def test_duplicate_question_id(tmp_path):
    path = tmp_path / "q.tsv"
    path.write_text("q0\tWhat colour is fresh snow?\twhite\nq0\tWhat colour is coal?\tblack\n")
    with pytest.raises(ValueError, match=re.escape(f"{path}:2: question id q0 is also on line 1")):
        questions.read_questions(path)


@pytest.mark.parametrize("response, answers, correct", [
    ("The capital of France is Paris.", ["Paris"], True),
    ("PARIS!", ["paris"], True),
    ("Parisian food is famous.", ["Paris"], False),
    ("It is New Delhi, of course.", ["New Delhi", "Delhi"], True),
    ("New York is big, and Delhi too", ["New Delhi"], False),  # the words must be contiguous
    ("There are 24 hours in a day.", ["twenty four", "24"], True),
    ("There are twenty-four hours.", ["twenty four", "24"], True),  # a hyphen separates words as a space does
    ("There are 240 hours.", ["24"], False),
    ("Grey, I think", ["grey", "gray"], True),
    ("", ["Paris"], False),
])
def test_correctness_rule(response, answers, correct):
    assert questions.is_correct(response, answers) is correct


def test_question_accuracy_on_a_hand_made_hypothesis_file(tmp_path):
    answers = {"a-questions00000": "Paris", "a-questions00001": "twenty four|24", "b-questions00002": "blue",
               "b-questions00003": "Tuesday"}
    hyps = {"a-questions00000": "The capital of France is Paris.", "a-questions00001": "A day has 24 hours",
            "b-questions00002": "The sky is bluish."}  # the last one has no hypothesis (e.g. a dropped refusal)
    write_kv(tmp_path / "answers", answers)
    write_kv(tmp_path / "hyp.txt", hyps)
    out = tmp_path / "accuracy.json"
    result = question_accuracy.main(["--hyp", str(tmp_path / "hyp.txt"), "--answers", str(tmp_path / "answers"),
                                     "--out", str(out)])
    expected = {"scored": 4, "correct": 2, "missing": 1, "accuracy": 0.5}
    assert result == expected
    assert json.loads(out.read_text()) == {"hyp": str(tmp_path / "hyp.txt"), "answers": str(tmp_path / "answers"),
                                           **expected}
    write_kv(tmp_path / "hyp.txt", {**hyps, "c-test00001": "Paris"})
    with pytest.raises(SystemExit, match="1 hypothesis\\(es\\) for utterances not in .* \\(first: c-test00001\\)"):
        question_accuracy.main(["--hyp", str(tmp_path / "hyp.txt"), "--answers", str(tmp_path / "answers")])


@pytest.mark.parametrize("seed", [0, 1])
def test_question_voices_are_test_only(seed):
    kept = questions.read_questions(KEPT)
    plan = make_questions_set.plan_questions(kept, seed)
    assert plan == make_questions_set.plan_questions(kept, seed)  # deterministic
    assert plan != make_questions_set.plan_questions(kept, seed + 1)
    sentences = [f"Sentence number {i} of the corpus." for i in range(300)]
    corpus = make_espeak_corpus.plan_corpus(sentences, {"train": 200, "dev": 20, "test": 20}, seed)
    variant = lambda utts: {u.voice.split("+", 1)[1] for u in utts}  # noqa: E731
    assert not variant(plan) & (variant(corpus["train"]) | variant(corpus["dev"]))
    assert variant(plan) <= set(make_espeak_corpus.split_variants(seed)[1]) and len(variant(plan)) >= 5
    assert [u.text for u in plan] == [q.text for q in kept]
    for i, u in enumerate(plan):
        assert u.utt_id == f"{u.speaker}-questions{i:05d}" and re.fullmatch(r"[a-z0-9_]+", u.speaker)


@needs_espeak
def test_synthesis_of_a_small_question_set(tmp_path):
    qs = [questions.Question("q0001", "What is the capital of France?", ("Paris",)),
          questions.Question("q0002", "How many hours are in a day?", ("twenty four", "24")),
          questions.Question("q0003", "What colour is fresh snow?", ("white",))]
    questions.write_questions(tmp_path / "kept.tsv", qs, ["three questions"])
    assert questions.read_questions(tmp_path / "kept.tsv") == qs
    data = tmp_path / "data" / "test_questions"
    args = ["--questions", str(tmp_path / "kept.tsv"), "--data_dir", str(data), "--wav_dir", str(tmp_path / "wav"),
            "--nj", "2"]
    make_questions_set.main(args)
    assert validate_data_dir(data) == []
    text, answers = read_kv(data / "text"), read_kv(data / "answers")
    plan = make_questions_set.plan_questions(qs, 0)
    assert text == {u.utt_id: q.text for u, q in zip(plan, qs)}
    assert answers == {u.utt_id: "|".join(q.answers) for u, q in zip(plan, qs)}
    wavs = read_kv(data / "wav.scp")
    assert all(Path(w).is_file() for w in wavs.values())
    tsv = (tmp_path / "data" / "local" / "espeak_test_questions.tsv").read_text().splitlines()
    assert len(tsv) == 4 and tsv[0].startswith("utt_id\tspeaker\tvoice")
    # Run again: the same plan's wavs are reused.
    mtimes = {w: Path(w).stat().st_mtime_ns for w in wavs.values()}
    make_questions_set.main(args)
    assert validate_data_dir(data) == []
    assert {w: Path(w).stat().st_mtime_ns for w in wavs.values()} == mtimes


@pytest.mark.real_models
def test_selection_with_the_real_llm(tmp_path, real_models):
    """The selection on four questions with SmolLM2 and the recipe's configs: the kept file holds exactly those whose
    teacher answer (the framing's response file) contains an accepted answer, with the chosen framing's instruction."""
    qs = questions.read_questions(CANDIDATES)[:4]
    questions.write_questions(tmp_path / "q.tsv", qs, [])
    instructions = ["none", "Answer the following question in one word."]
    select_questions.main([
        "--questions", str(tmp_path / "q.tsv"), "--out", str(tmp_path / "kept.tsv"), "--work_dir",
        str(tmp_path / "work"), "--llm", str(real_models.llm_dir), "--model_configs",
        *(str(MINI / "conf" / f"{n}.yaml") for n in ("warmstart", "pretrain", "finetune")),
        "--instruction_config", str(MINI / "conf" / "instructions.yaml"), "--instructions", *instructions,
        "--max_new_tokens", "16", "--min_kept", "1", "--device", "cpu"])
    selection = json.loads((tmp_path / "work" / "selection.json").read_text())
    assert selection["system_prompt"] == "You repeat the user's text exactly, word for word."
    counts = []
    for i, framing in enumerate(selection["framings"]):
        response = read_kv(tmp_path / "work" / f"framing{i}" / "response")
        correct = [q.qid for q in qs if q.qid in response and questions.is_correct(response[q.qid], q.answers)]
        assert framing["correct_ids"] == correct and framing["correct"] == len(correct)
        counts.append(len(correct))
    best = counts.index(max(counts))
    assert selection["chosen"] == best
    kept = questions.read_questions(tmp_path / "kept.tsv")
    chosen = None if instructions[best] == "none" else instructions[best]
    assert [q.qid for q in kept] == selection["framings"][best]["correct_ids"]
    header = [line for line in (tmp_path / "kept.tsv").read_text().splitlines() if line.startswith("#")]
    assert any(f"{counts[0]} of 4 correct" in line for line in header)
    assert any(f"chosen instruction {chosen!r}" in line for line in header)
