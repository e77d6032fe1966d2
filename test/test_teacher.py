"""Stage 3 teacher data: token counts, greedy continuations (batched = one at a time), sharding, resume, refusals."""
from __future__ import annotations

import logging
import subprocess
import sys

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from blspkd.data.kaldi_dir import read_kv, write_kv
from blspkd.data.prompts import ChatFraming
from blspkd.teacher import RefusalFilter, TeacherConfig, merge, prompt_ids, run_shard, shard_keys, write_utt2num_tokens

TEXTS = {
    "utt1": "the quick brown fox jumps over the lazy dog",
    "utt2": "she sells sea shells",
    "utt3": "knowledge distillation aligns speech with text and it works",
    "utt4": "hello world",
    "utt5": "the cat sat on the mat",
}


@pytest.fixture
def dump_dir(tmp_path):
    d = tmp_path / "dump"
    write_kv(d / "text", TEXTS)
    return d


def reference_continuation(llm_dir, instruction: str, text: str, max_new: int) -> str:
    """Plain greedy loop, one prompt, no padding and no cache: the independent reference for batched generation."""
    tok = AutoTokenizer.from_pretrained(llm_dir)
    model = AutoModelForCausalLM.from_pretrained(llm_dir).eval()
    ids = prompt_ids(ChatFraming(tok), instruction, text)
    eot = ChatFraming(tok).end_of_turn_ids[0]
    new = []
    with torch.no_grad():
        for _ in range(max_new):
            nxt = int(model(torch.tensor([ids + new])).logits[0, -1].argmax())
            if nxt in (tok.eos_token_id, model.generation_config.eos_token_id, eot):
                break
            new.append(nxt)
    return " ".join(tok.decode(new, skip_special_tokens=True).split())


def test_utt2num_tokens_counts_transcript_tokens_without_specials(dump_dir, tiny_llm_dir):
    tok = AutoTokenizer.from_pretrained(tiny_llm_dir)
    write_utt2num_tokens(dump_dir, tok)
    got = {k: int(v) for k, v in read_kv(dump_dir / "utt2num_tokens").items()}
    assert got == {k: len(tok.encode(t, add_special_tokens=False)) for k, t in TEXTS.items()}
    # the same count the collator gives the model (its transcript_mask), so CIF's N and utt2num_tokens agree
    assert got["utt1"] == len(ChatFraming(tok).transcript_ids(TEXTS["utt1"]))


def test_shard_keys_partition_sorted_keys():
    keys = [f"u{i:02d}" for i in range(11)][::-1]
    parts = [shard_keys(keys, j, 3) for j in (1, 2, 3)]
    assert sum(parts, []) == sorted(keys)
    assert [len(p) for p in parts] == [3, 4, 4]
    with pytest.raises(ValueError, match="shard must be in 1..3, got 4"):
        shard_keys(keys, 4, 3)


def test_sharded_continuations_equal_one_at_a_time_greedy(dump_dir, tiny_llm_dir, caplog):
    cfg = TeacherConfig(dump_dir=str(dump_dir), llm=str(tiny_llm_dir), max_new_tokens=6, batch_size=3, num_shards=2,
                        refusal_patterns=[])
    for j in (1, 2):
        cfg.shard = j
        run_shard(cfg)
    with caplog.at_level(logging.INFO):
        merged = merge(cfg)
    assert read_kv(dump_dir / "continuation") == merged
    expected = {k: reference_continuation(tiny_llm_dir, cfg.instruction, t, 6) for k, t in TEXTS.items()}
    assert merged == {k: v for k, v in expected.items() if v}
    assert len(merged) >= 3  # the tiny random model rarely stops at once: the comparison is not vacuous
    assert "new tokens/s" in caplog.text


def test_resume_regenerates_only_missing_and_torn_lines(dump_dir, tiny_llm_dir, caplog):
    cfg = TeacherConfig(dump_dir=str(dump_dir), llm=str(tiny_llm_dir), max_new_tokens=4, batch_size=2,
                        refusal_patterns=[])
    run_shard(cfg)
    shard_file = dump_dir / "teacher" / "continuation.1"
    full = shard_file.read_text()
    lines = full.splitlines(keepends=True)
    # a job killed while writing: the last line is torn (no newline) and one line is missing
    shard_file.write_text("".join(lines[:2]) + lines[2][:5])
    with caplog.at_level(logging.INFO):
        run_shard(cfg)
    assert "5 utterances, 2 already done, 3 to generate" in caplog.text
    assert sorted(shard_file.read_text().splitlines()) == sorted(full.splitlines())


def test_refusals_dropped_and_counted(dump_dir, tiny_llm_dir, caplog):
    assert RefusalFilter(["I'm sorry"])("I'M SORRY, I can not do that")
    assert RefusalFilter([])("")  # empty output counts as a refusal
    assert not RefusalFilter(["I'm sorry"])("a fine continuation")
    cfg = TeacherConfig(dump_dir=str(dump_dir), llm=str(tiny_llm_dir), max_new_tokens=3, refusal_patterns=[r"."])
    run_shard(cfg)
    with caplog.at_level(logging.INFO):
        merged = merge(cfg)
    assert merged == {}
    assert "5 refusal(s)/empty output(s) dropped (100.0%)" in caplog.text


def test_merge_refuses_incomplete_shard(dump_dir, tiny_llm_dir):
    cfg = TeacherConfig(dump_dir=str(dump_dir), llm=str(tiny_llm_dir), max_new_tokens=2, num_shards=2, shard=1)
    run_shard(cfg)
    with pytest.raises(RuntimeError, match=r"shard 2 of 2 is incomplete \(3 of 3 utterances missing, first utt3\)"):
        merge(cfg)


def test_cli_tokens_and_config_errors(dump_dir, tiny_llm_dir):
    run = [sys.executable, "-m", "blspkd.bin.make_teacher_data"]
    ok = subprocess.run(run + ["--dump_dir", str(dump_dir), "--llm", str(tiny_llm_dir), "--task", "tokens"],
                        capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    assert set(read_kv(dump_dir / "utt2num_tokens")) == set(TEXTS)
    bad = subprocess.run(run + ["--dump_dir", str(dump_dir), "--llm", "x", "--max_new_tokenz", "3"],
                         capture_output=True, text=True)
    assert bad.returncode == 2
    assert "unknown key 'max_new_tokenz' (did you mean 'max_new_tokens'?)" in bad.stderr
    printed = subprocess.run(run + ["--print_config"], capture_output=True, text=True)
    assert "max_new_tokens: 48" in printed.stdout and "refusal_patterns:" in printed.stdout
