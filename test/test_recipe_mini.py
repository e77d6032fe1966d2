"""The mini recipe (egs/mini_espeak): sentence selection, corpus plan (unseen test voices), synthesis, test_real, and
stages 0-2 through run.sh on a reduced corpus."""
from __future__ import annotations

import hashlib
import re
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile
from fixtures.recipe import REPO, make_recipe, run_script

from blspkd.data.feats_io import load_scp
from blspkd.data.kaldi_dir import read_kv, validate_data_dir

MINI = REPO / "egs" / "mini_espeak"
sys.path.insert(0, str(MINI / "local"))
import fortune_sentences  # noqa: E402
import make_espeak_corpus  # noqa: E402
import prepare_librivox  # noqa: E402
import questions  # noqa: E402

LIBRIVOX = Path(prepare_librivox.DEFAULT_SRC)
needs_fortunes = pytest.mark.skipif(not Path(fortune_sentences.DEFAULT_FORTUNES_DIR).is_dir(),
                                    reason="Debian's fortunes package is not installed (apt-get install fortunes)")
needs_librivox = pytest.mark.skipif(not (LIBRIVOX / "transcription").is_file(),
                                    reason="Debian's pocketsphinx-testdata is not installed")


@pytest.mark.parametrize(
    "sentence, clean",
    [
        ("A critic is a bundle of biases held loosely together by a sense of taste.", True),
        ("If pro is the opposite of con, what is the opposite of progress?", True),
        ("Too short to use.", False),
        ("I owe him 42 dollars and a little more.", False),  # digits
        ('He said "no" to all of them again.', False),  # quotes
        ("The UNIX way is to do one thing well.", False),  # acronym
        ("Reconciliation When conflict is reconciled, some hard feelings remain.", False),  # joined title
        ("This sentence was written for and dedicated to Mr.", False),  # abbreviation at the end
        ("Une phrase en fran\u00e7ais qui a assez de mots.", False),  # not ASCII
        ("one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen seventeen "
         "eighteen nineteen twenty twentyone.", False),  # lower-case start and too long
    ],
)
def test_sentence_filter(sentence, clean):
    assert fortune_sentences.is_clean(sentence) is clean


@needs_fortunes
def test_sentences_are_clean_unique_and_enough():
    sentences = fortune_sentences.load_sentences()
    assert len(sentences) >= 2200 + 1000  # the full corpus plus room
    assert all(fortune_sentences.is_clean(s) for s in sentences)
    keys = [re.sub(r"[^a-z ]", "", s.lower()) for s in sentences]
    assert len(set(keys)) == len(keys)
    assert sentences == fortune_sentences.load_sentences()


@needs_fortunes
def test_plan_is_deterministic_with_unseen_test_voices():
    sentences = fortune_sentences.load_sentences()
    sizes = {"train": 2000, "dev": 100, "test": 100}
    plan = make_espeak_corpus.plan_corpus(sentences, sizes, seed=0)
    assert {k: len(v) for k, v in plan.items()} == sizes
    variant = {name: {u.voice.split("+")[1] for u in utts} for name, utts in plan.items()}
    assert not variant["test"] & (variant["train"] | variant["dev"])
    assert len(variant["train"]) >= 40 and len({u.voice for u in plan["train"]}) >= 200  # many voices
    assert {u.voice.split("+")[0] for u in plan["train"]} == set(make_espeak_corpus.ACCENTS)
    speeds = [u.speed for u in plan["train"]]
    assert min(speeds) < 140 and max(speeds) > 200
    texts = [u.text for utts in plan.values() for u in utts]
    assert len(set(texts)) == len(texts)  # no sentence in two sets
    for utts in plan.values():
        for u in utts:
            assert u.utt_id.startswith(u.speaker + "-") and re.fullmatch(r"[a-z0-9_]+", u.speaker)
    assert make_espeak_corpus.plan_corpus(sentences, sizes, seed=0) == plan
    assert make_espeak_corpus.plan_corpus(sentences, sizes, seed=1) != plan
    smaller = make_espeak_corpus.plan_corpus(sentences, {**sizes, "train": 500}, seed=0)
    assert smaller["test"] == plan["test"] and smaller["dev"] == plan["dev"]  # --num_train leaves test speech alone
    assert smaller["train"] == plan["train"][:500]
    with pytest.raises(ValueError, match="only .* clean sentences are available; lower --num_train"):
        make_espeak_corpus.plan_corpus(sentences[:10], sizes, seed=0)


@needs_librivox
def test_librivox_test_real(tmp_path):
    n = prepare_librivox.prepare(LIBRIVOX, tmp_path / "test_real")
    assert n == 5 and validate_data_dir(tmp_path / "test_real") == []
    text = read_kv(tmp_path / "test_real" / "text")
    assert text["librivox-sense_and_sensibility_01_austen_64kb-0880"] == "He was not an ill disposed young man."
    assert set(read_kv(tmp_path / "test_real" / "utt2spk").values()) == {"librivox"}
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "transcription").write_text("<s> fine words here </s> (a)\nno markers (b)\n")
    with pytest.raises(ValueError, match=re.escape(f"{bad}/transcription:2: expected '<s> words </s> (id)'")):
        prepare_librivox.read_transcription(bad / "transcription")


def _md5(path: str) -> str:
    return hashlib.md5(Path(path).read_bytes()).hexdigest()


@needs_fortunes
def test_synthesis_small_corpus_deterministic_and_resumable(tmp_path):
    args = ["--num_train", "12", "--num_dev", "3", "--num_test", "3", "--nj", "2"]
    make_espeak_corpus.main(["--data_dir", str(tmp_path / "a"), "--wav_dir", str(tmp_path / "wa"), *args])
    for name, size in (("train", 12), ("dev", 3), ("test", 3)):
        d = tmp_path / "a" / name
        assert validate_data_dir(d) == [] and len(read_kv(d / "text")) == size
        for utt, wav in read_kv(d / "wav.scp").items():
            audio, rate = soundfile.read(wav, dtype="float32")
            info = soundfile.info(wav)
            assert rate == 16000 and info.channels == 1 and info.subtype == "PCM_16"
            assert 0.5 < len(audio) / rate < 15
            assert 0.70 < np.abs(audio).max() < 0.7085  # peak normalised to -3 dBFS (0.708): loud, with headroom
            assert Path(wav).name == f"{utt}.wav"
    tsv = (tmp_path / "a" / "local" / "espeak_train.tsv").read_text().splitlines()
    assert tsv[0].split("\t") == ["utt_id", "speaker", "voice", "speed", "pitch", "text"] and len(tsv) == 13
    # Same seed in another place: identical transcripts and audio.
    make_espeak_corpus.main(["--data_dir", str(tmp_path / "b"), "--wav_dir", str(tmp_path / "wb"), *args])
    for name in ("train", "test"):
        a, b = (read_kv(tmp_path / x / name / "wav.scp") for x in ("a", "b"))
        assert read_kv(tmp_path / "a" / name / "text") == read_kv(tmp_path / "b" / name / "text")
        assert [_md5(w) for w in a.values()] == [_md5(w) for w in b.values()]
    # Resume: only a missing wav is synthesised again.
    wavs = read_kv(tmp_path / "a" / "train" / "wav.scp")
    victim = sorted(wavs)[3]
    before = _md5(wavs[victim])
    mtimes = {u: Path(w).stat().st_mtime_ns for u, w in wavs.items() if u != victim}
    Path(wavs[victim]).unlink()
    make_espeak_corpus.main(["--data_dir", str(tmp_path / "a"), "--wav_dir", str(tmp_path / "wa"), *args])
    assert _md5(wavs[victim]) == before
    assert {u: Path(w).stat().st_mtime_ns for u, w in wavs.items() if u != victim} == mtimes


def _link_models(recipe: Path, real_models) -> None:
    """Use the test cache's converted models (the same conversion stage 0 runs) instead of converting again."""
    (recipe / "downloads").mkdir()
    (recipe / "downloads" / "whisper-tiny.en").symlink_to(real_models.whisper_dir)
    (recipe / "downloads" / "SmolLM2-135M-Instruct").symlink_to(real_models.llm_dir)


@pytest.mark.slow
@pytest.mark.real_models
@needs_fortunes
@needs_librivox
def test_mini_recipe_stages_0_to_2(tmp_path, real_models, monkeypatch):
    recipe = make_recipe(tmp_path / "egs" / "mini_espeak", MINI)
    _link_models(recipe, real_models)
    res = run_script(recipe, "./run.sh", "--stage", "0", "--stop_stage", "2", "--nj", "2",
                     "--local_data_opts", "--num_train 16 --num_dev 4 --num_test 4")
    assert res.returncode == 0, res.stdout[-5000:]
    assert "is complete (.complete present): skipping the conversion" in res.stdout
    monkeypatch.chdir(recipe)
    num_questions = len(questions.read_questions(MINI / "local" / "questions_kept.tsv"))
    sizes = {"train": 16, "dev": 4, "test": 4, "test_real": 5, "test_questions": num_questions}
    for name, size in sizes.items():
        assert validate_data_dir(recipe / "data" / name) == []
        dump = recipe / "dump" / name
        assert (dump / ".completed").is_file() and validate_data_dir(dump) == []
        feats = load_scp(dump / "feats.scp")
        assert len(feats) == size  # espeak sentences are 1-15 s: nothing is filtered
        frames = read_kv(dump / "utt2num_frames")
        for utt, mat in feats.items():
            assert mat.shape == (int(frames[utt]), 80) and mat.dtype == np.float32
        assert read_kv(dump / "text") == read_kv(recipe / "data" / name / "text")
    variants = {name: {line.split("\t")[2].split("+")[1] for line in
                       (recipe / "data" / "local" / f"espeak_{name}.tsv").read_text().splitlines()[1:]}
                for name in ("train", "dev", "test", "test_questions")}
    assert not (variants["test"] | variants["test_questions"]) & (variants["train"] | variants["dev"])
    # Everything is complete: a second run skips stages 1 and 2.
    res = run_script(recipe, "./run.sh", "--stage", "1", "--stop_stage", "2", "--nj", "2",
                     "--local_data_opts", "--num_train 16 --num_dev 4 --num_test 4")
    assert res.returncode == 0
    assert "data already prepared with the same options" in res.stdout
    assert res.stdout.count("already complete with the same options; skipping") == len(sizes)


@pytest.mark.slow
@pytest.mark.slurm
@needs_fortunes
@needs_librivox
def test_mini_recipe_on_slurm(tmp_path, slurm_cluster, tiny_whisper_dir, tiny_llm_dir, monkeypatch):
    """Stages 1-8 with --cmd_backend slurm (tiny models, few-step configs): every job of stages 2-6 (features, teacher
    continuations, the three trainings, decoding) is an sbatch job on the localhost cluster."""
    recipe = make_recipe(tmp_path / "egs" / "mini_espeak", MINI)
    env = {**slurm_cluster.env, "BLSPKD_SLURM_CONF": str(slurm_cluster.conf)}
    res = run_script(recipe, "./run.sh", "--stage", "1", "--stop_stage", "8", "--nj", "2", "--inference_nj", "2",
                     "--cmd_backend", "slurm", "--speech_encoder", str(tiny_whisper_dir), "--llm", str(tiny_llm_dir),
                     "--local_data_opts", "--num_train 8 --num_dev 2 --num_test 2 --num_questions 2",
                     "--instruction_config", "conf/tiny/instructions.yaml",
                     "--warmstart_config", "conf/tiny/warmstart.yaml", "--pretrain_config", "conf/tiny/pretrain.yaml",
                     "--finetune_config", "conf/tiny/finetune.yaml", "--continuation_sets", "train test",
                     "--teacher_args", "--max_new_tokens 4", "--decode_args", "--max_new_tokens 4", env=env)
    assert res.returncode == 0, res.stdout[-5000:]
    assert "cmd_backend=slurm" in res.stdout
    monkeypatch.chdir(recipe)
    for name, size in {"train": 8, "dev": 2, "test": 2, "test_real": 5}.items():
        assert len(load_scp(recipe / "dump" / name / "feats.scp")) == size
        log_dir = recipe / "dump" / name / "log"
        assert len(list(log_dir.glob("extract.*.log"))) == 2
        # run_slurm.py leaves the sbatch array script and Slurm's per-task output in <log dir>/q/
        assert "SLURM_ARRAY_TASK_ID" in (log_dir / "q" / "extract.sh").read_text()
    teacher_jobs = (("test", "continuation"), ("test_french", "instruction"), ("test_questions", "spoken_instruction"))
    for dset, task in teacher_jobs:
        assert "SLURM_ARRAY_TASK_ID" in (recipe / "dump" / dset / "log" / "q" / f"teacher_{task}.sh").read_text()
    for tag in ("warmstart", "pretrain", "finetune"):
        exp = recipe / "exp" / tag
        assert (exp / ".completed").is_file() and (exp / "model" / "model.safetensors").is_file(), tag
        assert "SLURM_ARRAY_TASK_ID" in (exp / "log" / "q" / "train.sh").read_text(), tag  # submitted with sbatch
    decode_log = recipe / "exp" / "finetune" / "decode_test" / "log"
    assert "SLURM_ARRAY_TASK_ID" in (decode_log / "q" / "decode.sh").read_text()
    assert "| exp/finetune | test | WER (%) |" in (recipe / "RESULTS.md").read_text()
    assert (recipe / "exp" / "finetune" / "export" / "export_info.json").is_file()
