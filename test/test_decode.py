"""Decoding (stage 6) on a tiny random BLSP-KD model: outputs, determinism, sharding, tasks and errors."""
from __future__ import annotations

import hashlib
import json
import os
import shutil

import pytest
import torch
import yaml

from blspkd.data.feats_io import load_scp
from blspkd.data.kaldi_dir import read_kv
from blspkd.decode import DecodeConfig, DecodeError, merge, resolve_model_dir, run
from blspkd.teacher import one_line
from blspkd.utils.config import ConfigError

FAST = {"max_new_tokens": 6}


@pytest.fixture(scope="module")
def model(tiny_model_dir):
    from blspkd.decode import load_model

    return load_model(tiny_model_dir, "cpu")


def _cfg(model_dir, dump_dir, out_dir, **kw) -> DecodeConfig:
    return DecodeConfig(model_dir=str(model_dir), dump_dir=str(dump_dir), out_dir=str(out_dir), **{**FAST, **kw})


def _jsonl(path):
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_decode_writes_every_output(model, tiny_model_dir, decode_dump_dir, tmp_path):
    out = tmp_path / "decode_test"
    run(_cfg(tiny_model_dir, decode_dump_dir, out, batch_size=3), model=model)
    text = read_kv(decode_dump_dir / "text")
    hyp_lines = (out / "hyp.txt").read_text(encoding="utf-8").splitlines()
    assert [line.split(" ", 1)[0] for line in hyp_lines] == sorted(text)  # key order, every utterance
    records = _jsonl(out / "hyp.jsonl")
    assert [r["key"] for r in records] == sorted(text)
    tok = model.tokenizer
    for r, line in zip(records, hyp_lines):
        assert set(r) == {"key", "instruction", "hypothesis", "reference", "num_speech_tokens", "num_transcript_tokens",
                          "num_generated_tokens"}
        assert r["instruction"] == "Repeat the following sentence exactly."
        assert r["reference"] == text[r["key"]]
        assert r["num_transcript_tokens"] == len(tok(text[r["key"]].strip(), add_special_tokens=False)["input_ids"])
        assert 1 <= r["num_generated_tokens"] <= FAST["max_new_tokens"]
        assert r["num_speech_tokens"] >= 1
        assert line == f"{r['key']} {r['hypothesis']}".rstrip()
    assert read_kv(out / "ref.txt") == text
    settings = yaml.safe_load((out / "decode_config.yaml").read_text())
    assert settings["model_dir"] == str(tiny_model_dir.resolve())
    assert settings["model_config_sha256"] == hashlib.sha256((tiny_model_dir / "config.json").read_bytes()).hexdigest()
    assert settings["generate_kwargs"]["max_new_tokens"] == 6 and settings["task"] == "transcription"
    stats = json.loads((out / "decode_stats.json").read_text())
    frames = sum(m.shape[0] for m in load_scp(decode_dump_dir / "feats.scp").values())
    assert stats["audio_seconds"] == pytest.approx(frames / 100)
    assert stats["generated_tokens"] == sum(r["num_generated_tokens"] for r in records)
    assert stats["real_time_factor"] == pytest.approx(stats["seconds"] / stats["audio_seconds"])
    assert (out / ".completed").is_file()


def test_cif_counts_and_texts_match_the_model_run_alone(model, tiny_model_dir, decode_dump_dir, tmp_path):
    """Independent reference: each utterance decoded on its own by BlspKdModel.generate (batch of one)."""
    out = tmp_path / "d"
    run(_cfg(tiny_model_dir, decode_dump_dir, out, batch_size=4), model=model)
    feats = load_scp(decode_dump_dir / "feats.scp")
    for r in _jsonl(out / "hyp.jsonl"):
        x = torch.from_numpy(feats[r["key"]].copy())[None]
        alone = model.generate(x, torch.tensor([x.shape[1]]), ["Repeat the following sentence exactly."],
                               return_details=True, max_new_tokens=6)
        assert r["hypothesis"] == one_line(alone["texts"][0])
        assert r["num_speech_tokens"] == alone["num_speech_tokens"][0]
        with torch.no_grad():
            alpha_sum = model.encode_speech(x, torch.tensor([x.shape[1]])).alpha_sum
        assert r["num_speech_tokens"] == max(1, round(float(alpha_sum[0])))  # N_hat = max(1, round(sum alpha))


def test_same_input_same_output_and_sharded_equals_unsharded(model, tiny_model_dir, decode_dump_dir, tmp_path):
    run(_cfg(tiny_model_dir, decode_dump_dir, tmp_path / "a", batch_size=7), model=model)
    run(_cfg(tiny_model_dir, decode_dump_dir, tmp_path / "b", batch_size=7), model=model)
    assert (tmp_path / "a/hyp.txt").read_bytes() == (tmp_path / "b/hyp.txt").read_bytes()
    for j in (1, 2, 3):
        assert run(_cfg(tiny_model_dir, decode_dump_dir, tmp_path / "s", batch_size=2, num_shards=3, shard=j),
                   model=model) is None
    merge(_cfg(tiny_model_dir, decode_dump_dir, tmp_path / "s", num_shards=3))
    assert (tmp_path / "s/hyp.txt").read_bytes() == (tmp_path / "a/hyp.txt").read_bytes()
    assert _jsonl(tmp_path / "s/hyp.jsonl") == _jsonl(tmp_path / "a/hyp.jsonl")


def test_merge_refuses_missing_or_mismatched_shards(model, tiny_model_dir, decode_dump_dir, tmp_path):
    out = tmp_path / "m"
    run(_cfg(tiny_model_dir, decode_dump_dir, out, num_shards=2, shard=1), model=model)
    with pytest.raises(DecodeError, match=rf"^{out}/shards: shard\(s\) 2 of 2 are not done \(no .completed.J marker\). "
                                          r"Fix: decode each missing shard J \(--shard J --num_shards 2; its log says "
                                          r"why it failed\), then merge again$"):
        merge(_cfg(tiny_model_dir, decode_dump_dir, out, num_shards=2))
    run(_cfg(tiny_model_dir, decode_dump_dir, out, num_shards=2, shard=2, max_new_tokens=3), model=model)
    with pytest.raises(DecodeError, match=r"shard 2 was written with other settings than shard 1 \(\['generate_kwargs',"
                                          r" 'max_new_tokens'\]\); remove .*/shards and run every shard again"):
        merge(_cfg(tiny_model_dir, decode_dump_dir, out, num_shards=2))
    assert not (out / ".completed").exists()


def test_finished_shard_is_skipped_unless_settings_change(model, tiny_model_dir, decode_dump_dir, tmp_path, caplog):
    cfg = _cfg(tiny_model_dir, decode_dump_dir, tmp_path / "r")
    run(cfg, model=model)
    caplog.set_level("INFO")
    run(cfg, model=model)
    assert "already decoded with the same settings" in caplog.text
    caplog.clear()
    run(_cfg(tiny_model_dir, decode_dump_dir, tmp_path / "r", num_beams=2), model=model)
    assert "already decoded" not in caplog.text
    assert yaml.safe_load((tmp_path / "r/decode_config.yaml").read_text())["generate_kwargs"]["num_beams"] == 2


def test_task_instructions_and_references(model, tiny_model_dir, decode_dump_dir, tmp_path):
    keys = sorted(read_kv(decode_dump_dir / "text"))
    run(_cfg(tiny_model_dir, decode_dump_dir, tmp_path / "c", task="continuation"), model=model)
    recs = _jsonl(tmp_path / "c/hyp.jsonl")
    assert {r["instruction"] for r in recs} == {"Continue the following text in a coherent style: "}
    assert [r["reference"] for r in recs] == [None] + ["and so the story goes on"] * (len(keys) - 1)
    assert sorted(read_kv(tmp_path / "c/ref.txt")) == keys[1:]  # the utterance without a continuation is not scored

    run(_cfg(tiny_model_dir, decode_dump_dir, tmp_path / "t", task="translation", language="German"), model=model)
    assert {r["instruction"] for r in _jsonl(tmp_path / "t/hyp.jsonl")} == {
        "Translate the following speech into German."}
    assert not (tmp_path / "t/ref.txt").exists()  # no translation file in this dump dir

    run(_cfg(tiny_model_dir, decode_dump_dir, tmp_path / "i", task="instruction"), model=model)
    per_utt = read_kv(decode_dump_dir / "instruction")
    assert [r["instruction"] for r in _jsonl(tmp_path / "i/hyp.jsonl")] == [per_utt[k] for k in keys]

    instruction_file = tmp_path / "instruction.txt"
    instruction_file.write_text("Summarise the speech in three words.\n")
    run(_cfg(tiny_model_dir, decode_dump_dir, tmp_path / "f", task="instruction",
             instruction_file=str(instruction_file)), model=model)
    assert {r["instruction"] for r in _jsonl(tmp_path / "f/hyp.jsonl")} == {"Summarise the speech in three words."}


def test_config_errors(model, tiny_model_dir, decode_dump_dir, tmp_path):
    with pytest.raises(ConfigError, match=r"task 'translation': its instruction names \{language\}; set the task's "
                                          r"'language' key"):
        run(_cfg(tiny_model_dir, decode_dump_dir, tmp_path / "x", task="translation"), model=model)
    bare = tmp_path / "bare"
    shutil.copytree(decode_dump_dir, bare)
    (bare / "instruction").unlink()
    with pytest.raises(ConfigError, match=rf"^task 'instruction' needs an instruction: give one, or a "
                                          rf"per-utterance file {bare}/instruction \(not found\)$"):
        run(_cfg(tiny_model_dir, bare, tmp_path / "y", task="instruction"), model=model)
    (bare / ".completed").unlink()
    with pytest.raises(FileNotFoundError, match=rf"^{bare}/.completed not found: {bare} is not a complete stage-2 "
                                                 r"dump dir \(run stage 2 of the recipe for this set\)$"):
        run(_cfg(tiny_model_dir, bare, tmp_path / "z"), model=model)
    with pytest.raises(ConfigError, match=r"^shard must be in 1..num_shards=2, got 3$"):
        run(_cfg(tiny_model_dir, decode_dump_dir, tmp_path / "w", num_shards=2, shard=3), model=model)


def test_model_dir_resolution(tiny_model_dir, tmp_path):
    exp = tmp_path / "exp"
    shutil.copytree(tiny_model_dir, exp / "model")
    assert resolve_model_dir(exp) == exp / "model"
    assert resolve_model_dir(tiny_model_dir) == tiny_model_dir
    (tmp_path / "unfinished/checkpoints").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match=r"\(training has checkpoints but has not finished: run the training "
                                                 r"stage to the end\)"):
        resolve_model_dir(tmp_path / "unfinished")


@pytest.mark.slow
def test_cli_end_to_end_in_subprocess(tiny_model_dir, decode_dump_dir, tmp_path):
    """The entry point as the recipe calls it: two shards as separate processes, then --merge."""
    import subprocess
    import sys

    base = [sys.executable, "-m", "blspkd.bin.decode", "--model_dir", str(tiny_model_dir), "--dump_dir",
            str(decode_dump_dir), "--out_dir", str(tmp_path / "cli"), "--max_new_tokens", "4", "--num_shards", "2"]
    for j in ("1", "2"):
        p = subprocess.run(base + ["--shard", j], capture_output=True, text=True)
        assert p.returncode == 0, p.stderr
    p = subprocess.run(base + ["--merge", "true"], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    assert "real-time factor" in p.stderr and "generated tokens/s" in p.stderr
    assert (tmp_path / "cli/.completed").is_file()
    p = subprocess.run(base + ["--taks", "continuation"], capture_output=True, text=True)
    assert p.returncode == 2
    assert "error: command line: unknown key 'taks' (did you mean 'task'?)" in p.stderr


@pytest.mark.slow
def test_recipe_stages_6_to_8(tiny_model_dir, decode_dump_dir, tmp_path):
    """blspkd.sh stages 6-8 in a throw-away recipe: sharded decoding (transcription + continuation), scoring,
    RESULTS.md, export; a re-run skips every pass."""
    from fixtures.recipe import make_recipe, run_script

    recipe = make_recipe(tmp_path / "egs" / "corpus")
    shutil.copytree(decode_dump_dir, recipe / "dump" / "test")
    shutil.copytree(tiny_model_dir, recipe / "exp" / "tiny" / "model")
    (recipe / "conf" / "decode.yaml").write_text("max_new_tokens: 4\nbatch_size: 2\n")
    args = ["./blspkd.sh", "--test_sets", "test", "--inference_model", "exp/tiny", "--inference_nj", "2",
            "--decode_config", "conf/decode.yaml", "--stage", "6", "--stop_stage", "8"]
    res = run_script(recipe, *args)
    assert res.returncode == 0, res.stdout[-3000:]
    exp = recipe / "exp" / "tiny"
    keys = sorted(read_kv(decode_dump_dir / "text"))
    for name, metric in (("decode_test", "WER"), ("decode_test_continuation", "align")):
        assert [line.split(" ", 1)[0] for line in (exp / name / "hyp.txt").read_text().splitlines()] == keys
        assert (exp / name / "log" / "decode.2.log").is_file()
        assert metric in (exp / name / "result.txt").read_text()
    assert yaml.safe_load((exp / "decode_test_continuation" / "decode_config.yaml").read_text())["task"] == \
        "continuation"
    assert "real-time factor" in res.stdout
    results = (recipe / "RESULTS.md").read_text()
    assert "| exp/tiny | test | WER (%) |" in results and "| exp/tiny | test_continuation | align BLEU |" in results
    card = (exp / "export" / "README.md").read_text()
    assert "| exp/tiny | test | WER (%) |" in card
    assert json.loads((exp / "export" / "config.json").read_text())["llm"] == "base/llm"
    assert os.access(exp / "run_stage6.sh", os.X_OK)

    res = run_script(recipe, *args)
    assert res.returncode == 0, res.stdout[-3000:]
    for name in ("decode_test", "decode_test_continuation"):  # skipped by stage 6's own markers, no Python started
        assert f"stage 6: exp/tiny/{name} already decoded with the same model, settings and data" in res.stdout
        assert f"stage 7: exp/tiny/{name} already scored from the same hypotheses and references" in res.stdout
    assert "RESULTS.md already up to date" in res.stdout
    assert "already exported from the same model; skipping" in res.stdout

    # Hypotheses edited by hand: stage 7 scores that pass again (only it) and rewrites RESULTS.md.
    hyp = exp / "decode_test" / "hyp.txt"
    hyp.write_text("".join(f"{key} nothing like it\n" for key in keys))
    res = run_script(recipe, *args[:-4], "--stage", "7", "--stop_stage", "7")
    assert res.returncode == 0, res.stdout[-3000:]
    assert "stage 7: scoring exp/tiny/decode_test (task transcription" in res.stdout
    assert "stage 7: exp/tiny/decode_test_continuation already scored" in res.stdout
    assert "RESULTS.md already up to date" not in res.stdout
    assert json.loads((exp / "decode_test" / "result.json").read_text())["hyp_sha256"] == \
        hashlib.sha256(hyp.read_bytes()).hexdigest()

    # Another version of a package the scores come from (a jiwer 99.0 found first on the path; the module imported is
    # still the real one): every pass is scored again.
    fake = tmp_path / "site" / "jiwer-99.0.dist-info"
    fake.mkdir(parents=True)
    (fake / "METADATA").write_text("Metadata-Version: 2.1\nName: jiwer\nVersion: 99.0\n")
    path = os.pathsep.join(filter(None, [str(fake.parent), os.environ.get("PYTHONPATH")]))
    res = run_script(recipe, *args[:-4], "--stage", "7", "--stop_stage", "7", env={"PYTHONPATH": path})
    assert res.returncode == 0, res.stdout[-3000:]
    for name in ("decode_test", "decode_test_continuation"):
        assert f"stage 7: scoring exp/tiny/{name} (task" in res.stdout
    assert "jiwer==99.0" in (exp / "decode_test" / ".completed.stage7").read_text()


@pytest.mark.gpu
def test_decode_on_gpu(tiny_model_dir, decode_dump_dir, tmp_path):
    """--device cuda decodes everything on the GPU; CIF counts (rounded alpha sums) agree with the CPU run."""
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    run(_cfg(tiny_model_dir, decode_dump_dir, tmp_path / "cpu", device="cpu", batch_size=3))
    run(_cfg(tiny_model_dir, decode_dump_dir, tmp_path / "gpu", device="cuda", batch_size=3))
    cpu, gpu = _jsonl(tmp_path / "cpu/hyp.jsonl"), _jsonl(tmp_path / "gpu/hyp.jsonl")
    assert [r["key"] for r in gpu] == [r["key"] for r in cpu]
    assert [r["num_speech_tokens"] for r in gpu] == [r["num_speech_tokens"] for r in cpu]
    assert json.loads((tmp_path / "gpu/decode_stats.json").read_text())["device"].startswith("cuda")
    same = sum(a["hypothesis"] == b["hypothesis"] for a, b in zip(cpu, gpu))
    print(f"GPU vs CPU: {same} of {len(cpu)} hypotheses identical")  # TF32/kernel differences may flip a token


def test_rebuilt_dump_dir_is_decoded_again(model, tiny_model_dir, decode_dump_dir, tmp_path, caplog):
    dump = tmp_path / "dump"
    shutil.copytree(decode_dump_dir, dump)
    cfg = _cfg(tiny_model_dir, dump, tmp_path / "o")
    run(cfg, model=model)
    (dump / ".completed").write_text("rebuilt\n")  # stage 2 ran again
    caplog.set_level("INFO")
    run(cfg, model=model)
    assert "already decoded" not in caplog.text


def test_length_cap_follows_cif_count_and_truncates_the_greedy_answer(model, tiny_model_dir, decode_dump_dir,
                                                                      tmp_path):
    """Capped greedy decoding = the uncapped answer cut at ceil(ratio * N_hat + offset) tokens, per utterance
    (the uncapped runs show every answer reaching max_new_tokens 20)."""
    import math

    from blspkd.decode import length_cap_kwargs

    free = tmp_path / "free"
    run(_cfg(tiny_model_dir, decode_dump_dir, free, batch_size=3, max_new_tokens=20), model=model)
    capped = tmp_path / "capped"
    run(_cfg(tiny_model_dir, decode_dump_dir, capped, batch_size=3, max_new_tokens=20, max_len_ratio=0.1,
             max_len_offset=1), model=model)
    n_cut = 0
    for a, b in zip(_jsonl(free / "hyp.jsonl"), _jsonl(capped / "hyp.jsonl")):
        cap = max(1, math.ceil(0.1 * a["num_speech_tokens"] + 1))
        assert b["num_generated_tokens"] == min(a["num_generated_tokens"], cap)
        n_cut += a["num_generated_tokens"] > cap
        if a["num_generated_tokens"] <= cap:
            assert b["hypothesis"] == a["hypothesis"]
    assert n_cut > 0  # the tiny random CIF counts ~90 tokens: caps of 9-13 < 20
    settings = yaml.safe_load((capped / "decode_config.yaml").read_text())["generate_kwargs"]
    assert (settings["max_len_ratio"], settings["max_len_offset"]) == (0.1, 1)
    # continuations and answers are not restatements of the speech: no cap, and no cap in their settings
    assert length_cap_kwargs(DecodeConfig(task="continuation", max_len_ratio=0.5)) == {}
    assert length_cap_kwargs(DecodeConfig(task="transcription")) == {}
    with pytest.raises(ConfigError, match="max_len_ratio and max_len_offset must be >= 0"):
        length_cap_kwargs(DecodeConfig(max_len_ratio=-1.0))
