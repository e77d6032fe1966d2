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
from blspkd.tasks import fixed_instruction
from blspkd.teacher import (
    DEFAULT_REFUSALS,
    RefusalFilter,
    TeacherConfig,
    framing_settings,
    merge,
    one_line,
    prompt_ids,
    run_shard,
    write_utt2num_tokens,
)
from blspkd.utils.shards import shard_keys

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


CONTINUE = fixed_instruction("continuation")


def reference_continuation(llm_dir, instruction: str, text: str, max_new: int, system_prompt=None, separator="\n",
                           finished: list | None = None) -> str:
    """Plain greedy loop, one prompt, no padding and no cache: the independent reference for batched generation.
    ``finished``: gets True when the loop stopped at an end-of-turn token, False when it ran out of tokens."""
    tok = AutoTokenizer.from_pretrained(llm_dir)
    model = AutoModelForCausalLM.from_pretrained(llm_dir).eval()
    framing = ChatFraming(tok, system_prompt, separator)
    ids = prompt_ids(framing, instruction, text)
    eot = framing.end_of_turn_ids[0]
    new = []
    stopped = False
    with torch.no_grad():
        for _ in range(max_new):
            nxt = int(model(torch.tensor([ids + new])).logits[0, -1].argmax())
            if nxt in (tok.eos_token_id, model.generation_config.eos_token_id, eot):
                stopped = True
                break
            new.append(nxt)
    if finished is not None:
        finished.append(stopped)
    return one_line(tok.decode(new, skip_special_tokens=True))


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
    with pytest.raises(ValueError, match=r"shard must be in 1..3 \(num_shards\), got 4"):
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
    expected = {k: reference_continuation(tiny_llm_dir, CONTINUE, t, 6) for k, t in TEXTS.items()}
    assert merged == {k: v for k, v in expected.items() if v}
    assert len(merged) >= 3  # the tiny random model rarely stops at once: the comparison is not vacuous
    assert "new tokens/s" in caplog.text


def test_resume_regenerates_only_missing_and_torn_lines(dump_dir, tiny_llm_dir, caplog):
    cfg = TeacherConfig(dump_dir=str(dump_dir), llm=str(tiny_llm_dir), max_new_tokens=4, batch_size=2,
                        refusal_patterns=[])
    run_shard(cfg)
    shard_dir = dump_dir / "teacher" / "continuation" / "shards"
    shard_file = shard_dir / "lines.1.jsonl"
    full = shard_file.read_text()
    lines = full.splitlines(keepends=True)
    # a job killed while writing: the last line is torn (no newline), two lines and the shard's marker are missing
    shard_file.write_text("".join(lines[:3]) + lines[3][:5])
    (shard_dir / ".completed.1").unlink()
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
    with pytest.raises(RuntimeError, match=r"/teacher/continuation/shards: shard\(s\) 2 of 2 are not done \(no "
                                            r"\.completed\.J marker\)\. Fix: run make_teacher_data .* --shard J for "
                                            r"each missing J \(it resumes\), then merge again"):
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


def test_truncated_continuations_are_flagged(dump_dir, tiny_llm_dir):
    cfg = TeacherConfig(dump_dir=str(dump_dir), llm=str(tiny_llm_dir), max_new_tokens=3, refusal_patterns=[])
    run_shard(cfg)
    merged = merge(cfg)
    flags = read_kv(dump_dir / "continuation.truncated")
    expected = {}
    for k, t in TEXTS.items():
        finished = []
        reference_continuation(tiny_llm_dir, CONTINUE, t, 3, finished=finished)
        expected[k] = "false" if finished[0] else "true"
    assert flags == {k: expected[k] for k in merged}
    assert "true" in flags.values()  # the tiny random model rarely stops within 3 tokens: the check is not vacuous


def test_greedy_ignores_the_llm_repetition_penalty(dump_dir, tiny_llm_dir, tmp_path):
    """Qwen2.5-Instruct's generation_config carries repetition_penalty 1.05; the teacher's answer is plain greedy."""
    import shutil

    from transformers import GenerationConfig

    llm = tmp_path / "llm"
    shutil.copytree(tiny_llm_dir, llm)
    gen = GenerationConfig.from_pretrained(llm)
    gen.repetition_penalty = 3.0
    gen.save_pretrained(llm)
    cfg = TeacherConfig(dump_dir=str(dump_dir), llm=str(llm), max_new_tokens=12, refusal_patterns=[])
    run_shard(cfg)
    merged = merge(cfg)
    expected = {k: reference_continuation(tiny_llm_dir, CONTINUE, t, 12) for k, t in TEXTS.items()}
    assert merged == {k: v for k, v in expected.items() if v}
    # Not vacuous: generating with the LLM's own generation_config (the penalty) gives other answers.
    tok = AutoTokenizer.from_pretrained(llm)
    model = AutoModelForCausalLM.from_pretrained(llm).eval()
    penalised = {}
    for k, t in TEXTS.items():
        ids = torch.tensor([prompt_ids(ChatFraming(tok), CONTINUE, t)])
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=12, do_sample=False)
        penalised[k] = one_line(tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True))
    assert penalised != expected


def test_default_refusal_patterns_match_refusals_only(dump_dir, tiny_llm_dir, caplog):
    refusal = RefusalFilter(DEFAULT_REFUSALS)
    for text in ("I'm sorry, but I can't help with that.", "I cannot assist with that request.",
                 "As an AI language model, I do not have opinions.", "I apologize, but I am unable to continue.",
                 "Sorry to say it, but I can’t provide that.", "I am not able to fulfill this request."):
        assert refusal(text), text
    for text in ("I cannot believe how fast the fox ran.", "I can't wait to see the sea again.",
                 "and then I said I'm sorry to the cat", "She knew I can do it.", "I cannot stop thinking of it."):
        assert not refusal(text), text
    cfg = TeacherConfig(dump_dir=str(dump_dir), llm=str(tiny_llm_dir), max_new_tokens=3, refusal_patterns=["."])
    with caplog.at_level(logging.INFO):
        run_shard(cfg)
    assert "shard 1: 5 refusal(s) or empty output(s) dropped, e.g. utt" in caplog.text


def test_prompts_framed_as_the_model_decodes(dump_dir, tiny_llm_dir, tmp_path):
    """Stage 3 takes the system prompt and separator of the training configs (later ones win, as init_from chains
    them), so the behaviour-alignment references are framed like the decoded answers."""
    first, second = tmp_path / "pretrain.yaml", tmp_path / "finetune.yaml"
    first.write_text('model:\n  system_prompt: "You repeat the text."\n  instruction_separator: " | "\n')
    second.write_text('model:\n  system_prompt: "You continue stories."\n')
    cfg = TeacherConfig(dump_dir=str(dump_dir), llm=str(tiny_llm_dir), max_new_tokens=6, refusal_patterns=[],
                        model_configs=[str(first), str(second)])
    assert framing_settings(cfg) == ("You continue stories.", " | ")
    run_shard(cfg)
    merged = merge(cfg)
    expected = {k: reference_continuation(tiny_llm_dir, CONTINUE, t, 6, "You continue stories.", " | ")
                for k, t in TEXTS.items()}
    assert merged == {k: v for k, v in expected.items() if v}
    default = {k: reference_continuation(tiny_llm_dir, CONTINUE, t, 6) for k, t in TEXTS.items()}
    assert default != expected  # the framing changes the answers: the comparison is not vacuous
    with pytest.raises(ValueError, match="give model_configs .* or system_prompt/separator, not both"):
        framing_settings(TeacherConfig(model_configs=[str(first)], system_prompt="x"))


def test_chat_template_date_is_pinned(tiny_llm_dir, tmp_path, monkeypatch):
    """A Llama 3.x template writes today's date into the system turn: the framing must not change by day."""
    import datetime

    from transformers.utils import chat_template_utils

    from blspkd.data.prompts import CHAT_DATE

    tok = AutoTokenizer.from_pretrained(tiny_llm_dir)
    turns = ("{% for m in messages %}{{ m['role'] + ': ' + m['content'] + '\\n' }}{% endfor %}"
             "{% if add_generation_prompt %}{{ 'assistant: ' }}{% endif %}")
    # as Llama 3.2/3.3 write it
    tok.chat_template = ("{%- if not date_string is defined %}{%- if strftime_now is defined %}"
                         "{%- set date_string = strftime_now('%d %b %Y') %}{%- else %}"
                         "{%- set date_string = '26 Jul 2024' %}{%- endif %}{%- endif %}"
                         "{{ 'Today Date: ' + date_string + '\\n' }}" + turns)
    prefixes = []
    for day in (datetime.datetime(2031, 1, 2), datetime.datetime(2031, 1, 3)):
        class Day(datetime.datetime):
            @classmethod
            def now(cls, tz=None, _day=day):
                return _day

        monkeypatch.setattr(chat_template_utils, "datetime", Day)
        prefixes.append(ChatFraming(tok, "Be brief.").prefix_ids("Continue:"))
    assert prefixes[0] == prefixes[1]
    assert tok.decode(prefixes[0]).startswith(f"Today Date: {CHAT_DATE.strftime('%d %b %Y')}\n")
    tok.chat_template = "{{ 'Today Date: ' + strftime_now('%d %b %Y') + '\\n' }}" + turns
    with pytest.raises(ValueError, match=r"calls strftime_now\(\) and ignores date_string: its prompt would change "
                                         r"with the day"):
        ChatFraming(tok)
