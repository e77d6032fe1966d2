"""Instruction following from speech (blspkd/instruction_eval.py): the per-instruction test sets, their references
(the LLM's text answers, framed exactly as decoding frames them), and the exact-match score."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
from fixtures.train import SENTENCES, make_dump_dir
from test_teacher import reference_continuation

from blspkd.data.kaldi_dir import read_kv, write_kv
from blspkd.decode import DecodeConfig, references, utterance_instructions
from blspkd.instruction_eval import (
    deal_out,
    derived_set_names,
    load_config,
    write_instruction_sets,
    write_spoken_request_instruction,
    write_train_instructions,
)
from blspkd.scoring import score_files
from blspkd.scoring.report import format_result_txt
from blspkd.teacher import TeacherConfig, merge, run_shard
from blspkd.train.dataset import DumpDir
from blspkd.utils.config import ConfigError

FRENCH = "Translate the following sentence into French."
QUESTION = "Is the following sentence a question? Answer yes or no."


@pytest.fixture
def config(tmp_path):
    path = tmp_path / "instructions.yaml"
    path.write_text(f'num_utts: 2\nmax_new_tokens: 5\ninstructions:\n  french: "{FRENCH}"\n  question: "{QUESTION}"\n'
                    'spoken_request_instruction: "Answer the following question in a few words."\n')
    return path


@pytest.fixture
def dump(tmp_path):
    d = make_dump_dir(tmp_path / "dump" / "test", SENTENCES[:5], seed=0,
                      continuations={f"spk{i % 3}-utt{i:03d}": "and so on" for i in range(5)})
    write_kv(d / "utt2num_tokens", {k: str(len(t.split())) for k, t in read_kv(d / "text").items()})
    return d


def test_config_is_strict(config, tmp_path):
    cfg = load_config(config)
    assert (cfg.num_utts, cfg.max_new_tokens, list(cfg.instructions)) == (2, 5, ["french", "question"])
    assert derived_set_names(cfg, ["test", "test_real"]) == ["test_french", "test_question", "test_real_french",
                                                             "test_real_question"]
    bad = tmp_path / "bad.yaml"
    bad.write_text("num_utt: 2\n")
    with pytest.raises(ConfigError, match="num_utt.*num_utts"):
        load_config(bad)
    bad.write_text('instructions:\n  "To French": "x"\n')
    with pytest.raises(ConfigError, match="instruction name 'To French' must be lower-case letters"):
        load_config(bad)
    bad.write_text('instructions:\n  french: ""\n')
    with pytest.raises(ConfigError, match="instruction 'french' must be one non-empty line"):
        load_config(bad)


def test_deal_out_gives_disjoint_subsets_in_turn():
    keys = ["u5", "u1", "u3", "u2", "u4", "u0"]
    assert deal_out(keys, ["a", "b"], 2) == {"a": ["u0", "u2"], "b": ["u1", "u3"]}
    assert deal_out(keys, ["a", "b", "c", "d"], 5) == {"a": ["u0", "u4"], "b": ["u1", "u5"], "c": ["u2"], "d": ["u3"]}


def test_instruction_sets_are_restricted_copies_with_their_instruction(config, dump):
    cfg = load_config(config)
    dirs = write_instruction_sets(cfg, dump)
    keys = sorted(read_kv(dump / "text"))
    assert {n: d.name for n, d in dirs.items()} == {"french": "test_french", "question": "test_question"}
    assert sorted(read_kv(dirs["french"] / "text")) == [keys[0], keys[2]]
    assert sorted(read_kv(dirs["question"] / "text")) == [keys[1], keys[3]]
    for name, instruction in (("french", FRENCH), ("question", QUESTION)):
        d = dirs[name]
        sub = sorted(read_kv(d / "text"))
        assert read_kv(d / "instruction") == dict.fromkeys(sub, instruction)
        for f in ("feats.scp", "utt2num_frames", "utt2num_tokens", "utt2spk"):
            src = read_kv(dump / f)
            assert read_kv(d / f) == {k: src[k] for k in sub}, f
        assert not (d / "continuation").exists()  # the other task's references stay behind
        assert json.loads((d / ".completed").read_text())["utterances"] == 2
    # Unchanged: left alone (the teacher's answers survive). A new instruction: rewritten without the old answers.
    write_kv(dirs["french"] / "response", {keys[0]: "Bonjour."})
    write_instruction_sets(cfg, dump)
    assert (dirs["french"] / "response").is_file()
    cfg.instructions["french"] = "Translate the following sentence into Spanish."
    write_instruction_sets(cfg, dump)
    assert not (dirs["french"] / "response").exists()
    assert set(read_kv(dirs["french"] / "instruction").values()) == {cfg.instructions["french"]}
    cfg.num_utts = 3  # more than the set has: the later instructions get fewer
    assert sorted(read_kv(write_instruction_sets(cfg, dump)["question"] / "text")) == [keys[1], keys[3]]
    cfg.instructions = {f"i{n}": "Say it again." for n in range(6)}
    with pytest.raises(ValueError, match="has 5 utterances: too few for 6 instructions"):
        write_instruction_sets(cfg, dump)


def test_references_are_the_llm_answers_framed_as_decoding(config, dump, tiny_llm_dir):
    """Stage 3 answers each instruction over the transcript; stage 6 decodes the same subset with the same
    instruction, from the same per-utterance file, and scores against those answers."""
    cfg = load_config(config)
    d = write_instruction_sets(cfg, dump)["question"]
    text = read_kv(d / "text")
    teacher = TeacherConfig(dump_dir=str(d), llm=str(tiny_llm_dir), task="instruction",
                            max_new_tokens=cfg.max_new_tokens, refusal_patterns=[], system_prompt="Be brief.")
    run_shard(teacher)
    answers = merge(teacher)
    expected = {k: reference_continuation(tiny_llm_dir, QUESTION, t, cfg.max_new_tokens, "Be brief.")
                for k, t in text.items()}
    assert answers == {k: v for k, v in expected.items() if v} and answers
    assert read_kv(d / "response") == answers
    decode = DecodeConfig(task="instruction", instruction=None, max_new_tokens=cfg.max_new_tokens)
    assert utterance_instructions(decode, DumpDir.load(d)) == dict.fromkeys(text, QUESTION)
    assert references("instruction", d) == answers


def test_spoken_request_instruction_written_and_removed(config, dump, tmp_path):
    cfg = load_config(config)
    path = write_spoken_request_instruction(cfg, dump)
    assert read_kv(path) == dict.fromkeys(read_kv(dump / "text"), cfg.spoken_request_instruction)
    cfg.spoken_request_instruction = None
    assert write_spoken_request_instruction(cfg, dump) is None and not path.exists()


def test_cli_for_the_shell(config, dump):
    run = [sys.executable, "-m", "blspkd.bin.make_instruction_sets", "--config", str(config)]
    out = subprocess.run(run + ["--names", "test test_real"], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["test_french", "test_question", "test_real_french", "test_real_question"]
    out = subprocess.run(run + ["--get", "max_new_tokens"], capture_output=True, text=True, check=True)
    assert out.stdout == "5\n"
    subprocess.run(run + ["--dump_dir", str(dump)], capture_output=True, text=True, check=True)
    assert (dump.parent / "test_question" / "instruction").is_file()
    bad = subprocess.run(run + ["--dump_dir", str(dump.parent / "nope")], capture_output=True, text=True)
    assert bad.returncode == 1 and "nope: not a complete dump dir (no .completed); run stage 2 first" in bad.stderr


def test_exact_match_after_the_normaliser(tmp_path):
    ref, hyp = tmp_path / "ref.txt", tmp_path / "hyp.txt"
    write_kv(ref, {"a": "Yes.", "b": "The capital of France is Paris.", "c": "No, it is not.", "d": "Bonjour!"})
    write_kv(hyp, {"a": "yes", "b": "The capital of France is Paris!", "c": "No, it isn't a question.", "d": ""})
    result = score_files(ref, hyp, ["exact", "align"], "en")
    exact = result.summary["metrics"]["exact"]
    assert (exact["num_exact"], exact["num_utts"]) == (2, 4) and exact["score"] == pytest.approx(50.0)
    rows = result.sentences["exact"]
    assert [(r["key"], r["exact"]) for r in rows] == [("c", False), ("d", False), ("a", True), ("b", True)]
    assert rows[0]["ref"] == "no it is not" and rows[0]["hyp"] == "no it is not a question"
    assert result.summary["normalizer"].startswith("whisper_en")
    assert "exact match (%) 50.00  [2/4 after the normaliser]" in format_result_txt(result.summary, {}, [])


def test_training_instructions_spread_over_the_set_and_answered_for_those_only(config, dump, tiny_llm_dir, caplog):
    with config.open("a") as f:
        f.write('train_num_utts: 3\ntrain_instructions: ["Say it in German.", "Give its topic in one word."]\n')
    cfg = load_config(config)
    keys = sorted(read_kv(dump / "text"))
    path = write_train_instructions(cfg, dump)
    assert read_kv(path) == {keys[0]: "Say it in German.", keys[1]: "Give its topic in one word.",
                             keys[3]: "Say it in German."}
    teacher = TeacherConfig(dump_dir=str(dump), llm=str(tiny_llm_dir), task="instruction", max_new_tokens=4,
                            refusal_patterns=[], num_shards=2)
    with caplog.at_level("INFO"):
        for shard in (1, 2):
            teacher.shard = shard
            run_shard(teacher)
    assert "3 of the 5 utterances have an instruction; the teacher answers those" in caplog.text
    text = read_kv(dump / "text")
    expected = {k: reference_continuation(tiny_llm_dir, i, text[k], 4) for k, i in read_kv(path).items()}
    assert merge(teacher) == {k: v for k, v in expected.items() if v} == read_kv(dump / "response")


def test_training_instructions_must_not_be_test_instructions(config):
    with config.open("a") as f:
        f.write(f'train_num_utts: 3\ntrain_instructions: ["{FRENCH.upper()}"]\n')
    with pytest.raises(ConfigError, match="is the test instruction 'french': the test measures instructions not seen"):
        load_config(config)
