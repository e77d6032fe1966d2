"""The task registry (blspkd/tasks.py): every consumer reads one table, and a new task is one entry.

A task registered here (as issue 15's instruction-following tasks will be) flows through training data selection,
teacher prompts, decoding instructions and references, and stage 7's scoring options without any other edit."""
from __future__ import annotations

import subprocess
import sys

import pytest
from fixtures.train import SENTENCES, make_dump_dir

from blspkd import tasks
from blspkd.data.kaldi_dir import read_kv, write_kv
from blspkd.decode import DecodeConfig, references, utterance_instructions
from blspkd.scoring import parse_metrics
from blspkd.teacher import TeacherConfig, teacher_instructions, teacher_task
from blspkd.train.config import TaskConfig
from blspkd.train.dataset import DumpDir, TrainingData
from blspkd.utils.config import ConfigError

QUESTION = "Say whether the following sentence is a question."


@pytest.fixture
def question_task():
    task = tasks.register(tasks.Task("is_question", QUESTION, "response_is_question", "response_is_question",
                                     ("chrf", "bleu"), teacher=True, partial_references=True))
    yield task
    del tasks.TASKS[task.name]


def test_every_registered_task_is_scorable_and_complete():
    for t in tasks.TASKS.values():
        assert parse_metrics(",".join(t.metrics)) == list(t.metrics), t.name
        assert t.reference, t.name
    assert tasks.score_options("transcription") == ["--metric", "wer,cer,bleu,chrf"]
    assert tasks.score_options("translation") == ["--metric", "bleu,chrf", "--allow_missing"]
    assert tasks.fixed_instruction("translation", language="German") == "Translate the following speech into German."
    with pytest.raises(ConfigError, match=r"^unknown task 'transcribe'; choose from plain, transcription, "):
        tasks.get_task("transcribe")


def test_a_registered_task_flows_through_dataset_teacher_decode_and_scoring(question_task, tmp_path):
    dump = make_dump_dir(tmp_path / "dump", SENTENCES[:4], seed=0)
    keys = sorted(read_kv(dump / "text"))
    answers = {k: f"No, it is not a question ({i})." for i, k in enumerate(keys[1:])}  # keys[0]: refused in stage 3
    write_kv(dump / "response_is_question", answers)
    write_kv(dump / "response_is_question.truncated", {k: "true" if k == keys[1] else "false" for k in answers})

    data = TrainingData([dump], [TaskConfig(kind="is_question")])
    assert sorted(data.eligible[0]) == keys[1:]
    item = data[(0, keys[1], 0)]
    assert (item["instruction"], item["response"], item["response_truncated"]) == (QUESTION, answers[keys[1]], True)
    assert "response_truncated" not in data[(0, keys[2], 0)]

    cfg = TeacherConfig(dump_dir=str(dump), task="is_question")
    assert teacher_task(cfg) is question_task
    assert teacher_instructions(cfg, dump, keys) == dict.fromkeys(keys, QUESTION)

    loaded = DumpDir.load(dump)
    assert utterance_instructions(DecodeConfig(task="is_question"), loaded) == dict.fromkeys(keys, QUESTION)
    assert references("is_question", dump) == answers

    assert tasks.score_options("is_question") == ["--metric", "chrf,bleu", "--allow_missing"]
    from blspkd.bin import tasks as tasks_cli

    assert tasks_cli.main(["score_options", "is_question"]) == 0


def test_tasks_cli_for_the_shell(capsys):
    run = [sys.executable, "-m", "blspkd.bin.tasks"]
    out = subprocess.run(run + ["score_options", "continuation"], capture_output=True, text=True)
    assert (out.returncode, out.stdout) == (0, "--metric align --allow_missing\n")
    listed = subprocess.run(run + ["list"], capture_output=True, text=True).stdout
    assert all(name in listed for name in tasks.TASKS)
    bad = subprocess.run(run + ["score_options", "nope"], capture_output=True, text=True)
    assert bad.returncode == 2 and "unknown task 'nope'" in bad.stderr


def test_teacher_task_must_take_teacher_data():
    with pytest.raises(ConfigError, match="task 'transcription' takes no teacher data; choose tokens or one of "
                                          "continuation, spoken_instruction, instruction"):
        teacher_task(TeacherConfig(task="transcription"))
