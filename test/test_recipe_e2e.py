"""End-to-end recipe test: the mini recipe's run.sh, stages 1-8, on a tiny corpus with tiny random models.

Stage 0 (converting the real Whisper tiny.en / SmolLM2) is replaced by the tiny random models of
test/fixtures/tiny_models.py and the few-step training configs of egs/mini_espeak/conf/tiny/, so the whole pipeline
(espeak-ng corpus, features, teacher data, warm start + KD pretraining, instruction tuning, decoding, scoring, export,
inference) runs in a few minutes on a laptop CPU. The test checks what every stage leaves behind, runs the exported
model with ``python -m blspkd.bin.infer``, and re-runs the whole command to check that every stage skips its finished
work.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from fixtures.recipe import REPO, make_recipe, run_script

from blspkd.data.feats_io import load_scp
from blspkd.data.kaldi_dir import read_kv, validate_data_dir

MINI = REPO / "egs" / "mini_espeak"
sys.path.insert(0, str(MINI / "local"))
import fortune_sentences  # noqa: E402
import prepare_librivox  # noqa: E402

SIZES = {"train": 16, "dev": 4, "test": 4, "test_real": 5, "test_questions": 4}
TEST_SETS = ("test", "test_real", "test_questions")
# Stage 3 generates continuations for these sets only (--continuation_sets); the others get token counts alone.
CONTINUATION_SETS = ("train", "test")
# conf/tiny/instructions.yaml: two held-out instructions over 2 test utterances each (run.sh: --instruction_sets test,
# --spoken_request_sets test_questions, --instruction_exps exp/pretrain), answers for 4 training utterances.
INSTRUCTION_SETS = ("test_french", "test_is_question")


def recipe_args(tiny_whisper_dir, tiny_llm_dir) -> list[str]:
    """The e2e run's command line, stages left to the caller."""
    return ["./run.sh", "--nj", "2", "--inference_nj", "2",
            "--local_data_opts", "--num_train 16 --num_dev 4 --num_test 4 --num_questions 4 --nj 2",
            "--instruction_config", "conf/tiny/instructions.yaml",
            "--speech_encoder", str(tiny_whisper_dir), "--llm", str(tiny_llm_dir),
            "--warmstart_config", "conf/tiny/warmstart.yaml", "--pretrain_config", "conf/tiny/pretrain.yaml",
            "--finetune_config", "conf/tiny/finetune.yaml",
            "--continuation_sets", " ".join(CONTINUATION_SETS),
            "--teacher_args", "--max_new_tokens 8", "--decode_args", "--max_new_tokens 8",
            # both caches as in the mini recipe's own configs (run.sh passes --encoder_cache true to stage 2)
            "--pretrain_args", "--data.encoder_cache true", "--finetune_args", "--data.encoder_cache true"]


@pytest.fixture(scope="module")
def e2e(tmp_path_factory, tiny_whisper_dir, tiny_llm_dir):
    """The mini recipe in a sandbox after one full run (stages 1-8) and a second, identical run."""
    if not Path(fortune_sentences.DEFAULT_FORTUNES_DIR).is_dir():
        pytest.skip("Debian's fortunes package is not installed (apt-get install fortunes)")
    if not (Path(prepare_librivox.DEFAULT_SRC) / "transcription").is_file():
        pytest.skip("Debian's pocketsphinx-testdata is not installed")
    recipe = make_recipe(tmp_path_factory.mktemp("e2e") / "egs" / "mini_espeak", MINI)
    args = [*recipe_args(tiny_whisper_dir, tiny_llm_dir), "--stage", "1", "--stop_stage", "8"]
    start = time.time()
    first = run_script(recipe, *args)
    first_s = time.time() - start
    assert first.returncode == 0, first.stdout[-6000:]
    start = time.time()
    second = run_script(recipe, *args)
    second_s = time.time() - start
    assert second.returncode == 0, second.stdout[-6000:]
    return recipe, first, second, first_s, second_s


@pytest.mark.slow
def test_data_and_dump_dirs(e2e, monkeypatch):
    recipe = e2e[0]
    monkeypatch.chdir(recipe)  # feats.scp names arks relative to the recipe dir, as in Kaldi/ESPnet
    for name, size in SIZES.items():
        data = recipe / "data" / name
        assert validate_data_dir(data) == []
        assert len(read_kv(data / "text")) == size
        dump = recipe / "dump" / name
        assert (dump / ".completed").is_file() and validate_data_dir(dump) == []
        keys = list(read_kv(dump / "text"))
        assert len(keys) == size  # espeak sentences and the LibriVox clips are 1-15 s: nothing is filtered
        assert sorted(load_scp(dump / "feats.scp")) == keys
        for per_utt in ("utt2num_frames", "utt2num_tokens"):
            assert list(read_kv(dump / per_utt)) == keys, per_utt
        if name in CONTINUATION_SETS:
            assert list(read_kv(dump / "continuation")) == keys
        else:
            assert not (dump / "continuation").exists(), name
        assert all(int(n) > 0 for n in read_kv(dump / "utt2num_tokens").values())


@pytest.mark.slow
def test_trained_exp_dirs(e2e):
    recipe = e2e[0]
    for tag, steps in (("warmstart", 3), ("pretrain", 6), ("finetune", 4)):
        exp = recipe / "exp" / tag
        assert (exp / ".completed").is_file(), tag
        assert (exp / "model" / "config.json").is_file() and (exp / "model" / "model.safetensors").is_file()
        assert (exp / ".completed").read_text().startswith(f"step {steps}\n"), tag  # the configs' max_steps
        # a CPU training job gets every core of the node (path.sh's OMP_NUM_THREADS=1 is for parallel jobs)
        assert f"threads={len(os.sched_getaffinity(0))}\n" in (exp / "log" / "train.log").read_text(), tag
        assert (exp / f"run_stage{5 if tag == 'finetune' else 4}.sh").is_file()
    # KD pretraining started from the warm start's model, instruction tuning from KD's (a log's first line is the
    # command).
    for tag, init in (("pretrain", "warmstart"), ("finetune", "pretrain")):
        first_line = (recipe / "exp" / tag / "log" / "train.log").read_text().split("\n", 1)[0]
        assert first_line.endswith(f"--init_from exp/{init}/model --data.encoder_cache true"), first_line
    # ... reading the encoder outputs that stage 2 cached for the training sets (run.sh: --encoder_cache true)
    for dset in ("train", "dev"):
        assert json.loads((recipe / "dump" / dset / "encoder_out.json").read_text())["num_utts"] == SIZES[dset]


@pytest.mark.slow
def test_decoding_scoring_results(e2e):
    recipe = e2e[0]
    exp = recipe / "exp" / "finetune"
    for dset in TEST_SETS:
        keys = list(read_kv(recipe / "dump" / dset / "text"))
        passes = [(f"decode_{dset}", "transcription")]
        if dset in CONTINUATION_SETS:
            passes.append((f"decode_{dset}_continuation", "continuation"))
        else:  # no teacher continuations, no continuation pass
            assert not (exp / f"decode_{dset}_continuation").exists()
        for name, task in passes:
            ddir = exp / name
            assert [line.split(" ", 1)[0] for line in (ddir / "hyp.txt").read_text().splitlines()] == keys, name
            hyps = [json.loads(line) for line in (ddir / "hyp.jsonl").read_text().splitlines()]
            assert [h["key"] for h in hyps] == keys
            assert yaml.safe_load((ddir / "decode_config.yaml").read_text())["task"] == task
            assert (ddir / "result.json").is_file() and (ddir / "result.txt").is_file()
    # Stage 3 framed the teacher's continuations exactly as stage 6 decodes the final model (its system prompt and
    # instruction separator), so the behaviour-alignment score compares like with like.
    model_config = json.loads((exp / "model" / "config.json").read_text())
    assert model_config["system_prompt"] == "You repeat the user's text exactly, word for word."
    for dset in CONTINUATION_SETS:
        teacher = json.loads((recipe / "dump" / dset / "teacher" / "continuation" / ".completed").read_text())
        assert teacher["signature"]["system_prompt"] == model_config["system_prompt"], dset
        assert teacher["signature"]["separator"] == model_config["instruction_separator"], dset
    results = (recipe / "RESULTS.md").read_text()
    assert str(recipe) not in results  # paths relative to the recipe
    for dset in TEST_SETS:
        assert f"| exp/finetune | {dset} | WER (%) |" in results
        assert (f"| exp/finetune | {dset}_continuation | align BLEU |" in results) == (dset in CONTINUATION_SETS)


@pytest.mark.slow
def test_instruction_following_passes(e2e):
    """Stage 3 made one dump dir per held-out instruction with the LLM's text answers, framed as the model decodes;
    stages 6-7 decoded and scored them (and the spoken questions) for the final and the KD-only model."""
    recipe = e2e[0]
    model_config = json.loads((recipe / "exp" / "finetune" / "model" / "config.json").read_text())
    test_keys = sorted(read_kv(recipe / "dump" / "test" / "text"))
    seen: list[str] = []
    for name, instruction in zip(INSTRUCTION_SETS, ("Translate the following sentence into French.",
                                                    "Is the following sentence a question? Answer yes or no.")):
        dump = recipe / "dump" / name
        keys = sorted(read_kv(dump / "text"))
        assert len(keys) == 2 and not set(keys) & set(seen) and set(keys) <= set(test_keys)
        seen += keys
        assert read_kv(dump / "instruction") == dict.fromkeys(keys, instruction)
        teacher = json.loads((dump / "teacher" / "instruction" / ".completed").read_text())
        assert teacher["signature"]["system_prompt"] == model_config["system_prompt"]
        assert teacher["signature"]["max_new_tokens"] == 8  # --teacher_args "--max_new_tokens 8" wins over the config
        refs = read_kv(dump / "response")
        for tag in ("finetune", "pretrain"):
            ddir = recipe / "exp" / tag / f"decode_{name}"
            assert yaml.safe_load((ddir / "decode_config.yaml").read_text())["task"] == "instruction"
            assert read_kv(ddir / "ref.txt") == refs
            metrics = json.loads((ddir / "result.json").read_text())["metrics"]
            assert set(metrics) == {"align_bleu", "align_chrf", "align_chrf_mismatched", "exact"}
            assert metrics["exact"]["num_utts"] == len(refs)
    answers = read_kv(recipe / "dump" / "test_questions" / "response")
    assert answers and not (recipe / "dump" / "test_questions" / "instruction").exists()  # the speech alone asks
    for tag in ("finetune", "pretrain"):
        ddir = recipe / "exp" / tag / "decode_test_questions_answer"
        assert yaml.safe_load((ddir / "decode_config.yaml").read_text())["task"] == "spoken_instruction"
        assert read_kv(ddir / "ref.txt") == answers
    # the KD-only model is measured on the instruction passes only
    assert not (recipe / "exp" / "pretrain" / "decode_test").exists()
    results = (recipe / "RESULTS.md").read_text()
    for tag in ("finetune", "pretrain"):
        for name in (*INSTRUCTION_SETS, "test_questions_answer"):
            assert f"| exp/{tag} | {name} | exact match (%) |" in results
    # instruction tuning: 4 training utterances with the LLM's answers to the training instructions
    train = recipe / "dump" / "train"
    assert len(read_kv(train / "instruction")) == 4 and set(read_kv(train / "response")) <= set(
        read_kv(train / "instruction"))
    log = (recipe / "exp" / "finetune" / "log" / "train.log").read_text()
    assert "tasks ['transcription', 'continuation', 'instruction']" in log


@pytest.mark.slow
def test_export_runs_with_infer(e2e):
    recipe = e2e[0]
    export = recipe / "exp" / "finetune" / "export"
    assert (export / "export_info.json").is_file() and (export / "README.md").is_file()
    key, path = next(iter(read_kv(recipe / "data" / "test" / "wav.scp").items()))
    proc = subprocess.run([sys.executable, "-m", "blspkd.bin.infer", "--model", str(export), "--audio", path,
                           "--max_new_tokens", "8", "--no_stream"], cwd=recipe, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    # Same model, audio, instruction and greedy settings as stage 6's transcription pass: the same text.
    hyp_jsonl = recipe / "exp" / "finetune" / "decode_test" / "hyp.jsonl"
    hyps = {h["key"]: h for h in map(json.loads, hyp_jsonl.read_text().splitlines())}
    printed = proc.stdout.rstrip("\n").split("\t")[-1]  # "<file>\t<text>" (the text alone when streamed)
    assert printed == " ".join(hyps[key]["hypothesis"].split())


@pytest.mark.slow
def test_rerun_skips_every_stage(e2e):
    recipe, first, second, first_s, second_s = e2e
    out = second.stdout
    assert "data already prepared with the same options" in out
    assert out.count("already complete with the same options; skipping") == len(SIZES)
    assert out.count("already has its teacher data with the same options; skipping") == len(SIZES) + len(
        INSTRUCTION_SETS)
    for stage, tag in ((4, "warmstart"), (4, "pretrain"), (5, "finetune")):
        assert f"stage {stage}: exp/{tag} already trained" in out
    assert "already exported from the same model; skipping" in out
    decoded = re.findall(r"stage 6: (\S+): \d+ utterances in \d+ jobs", first.stdout)
    skipped = re.findall(r"stage 6: (\S+) already decoded with the same model, settings and data; skipping",
                         out)
    assert len(decoded) >= len(TEST_SETS) + len(INSTRUCTION_SETS) and skipped == decoded
    scored = re.findall(r"stage 7: scoring (\S+) \(task", first.stdout)
    assert re.findall(r"stage 7: (\S+) already scored from the same hypotheses and references", out) == scored
    assert len(scored) >= len(TEST_SETS) and "RESULTS.md already up to date" in out
    assert second_s < first_s / 2, (first_s, second_s)


@pytest.mark.slow
def test_other_decoding_settings_or_force_decode_again(e2e, tiny_whisper_dir, tiny_llm_dir):
    """Stage 6's skip is keyed on the settings: other decode_args redo the pass, and so does --force true (which
    also drops the shards, whose own markers would skip them)."""
    recipe = e2e[0]
    args = recipe_args(tiny_whisper_dir, tiny_llm_dir)
    args[args.index("--decode_args") + 1] = "--max_new_tokens 6"
    args += ["--stage", "6", "--stop_stage", "6", "--test_sets", "test_real", "--instruction_sets", "",
             "--spoken_request_sets", "", "--instruction_exps", ""]
    decoded = re.compile(r"stage 6: exp/finetune/decode_test_real: 5 utterances in \d+ jobs")
    for extra, message in (([], "decoding test_real"), (["--force", "true"], "removing exp/finetune/decode_test_real/"
                                                                             "shards (--force)")):
        run = run_script(recipe, *args, *extra)
        assert run.returncode == 0, run.stdout[-6000:]
        assert message in run.stdout and decoded.search(run.stdout) and "already decoded" not in run.stdout
        log = (recipe / "exp/finetune/decode_test_real/log/decode.1.log").read_text()
        assert "already decoded" not in log  # the shards decoded, not skipped
    config = yaml.safe_load((recipe / "exp/finetune/decode_test_real/decode_config.yaml").read_text())
    assert config["max_new_tokens"] == 6
    again = run_script(recipe, *args)
    assert "stage 6: exp/finetune/decode_test_real already decoded with the same model" in again.stdout
