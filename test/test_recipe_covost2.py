"""egs/covost2: stage 1 (and 2) on a fake Common Voice + CoVoST 2 corpus in the real layout, bad input, the configs."""
from __future__ import annotations

import csv
import hashlib
import io
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import soundfile as sf
from fixtures.fake_corpora import MAIN_ROOT, recipe_sandbox, write_tsv

from blspkd.data.kaldi_dir import read_kv, validate_data_dir

RECIPE = MAIN_ROOT / "egs" / "covost2"
SPLITS = {"train": ("train", "train_covost"), "dev": ("dev",), "test": ("test",)}


def run(cmd: list[str], cwd: Path, check: bool = True) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("COMMONVOICE_EN", "COVOST2", "COVOST_TGT_LANG")}
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env=env)
    if check and proc.returncode != 0:
        raise AssertionError(f"{cmd} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


def data_opts(corpus) -> str:
    return f"--cv_dir {corpus.cv_dir} --covost_dir {corpus.covost_dir}"


@pytest.fixture(scope="module")
def stage1(fake_covost2, tmp_path_factory) -> Path:
    recipe = recipe_sandbox(tmp_path_factory.mktemp("covost_recipe"), "covost2")
    run(["./run.sh", "--tgt_lang", "de", "--stage", "1", "--stop_stage", "1",
         "--local_data_opts", data_opts(fake_covost2)], recipe)
    return recipe


def expected_split(corpus, split: str) -> dict[str, tuple[str, str, str]]:
    """utt id -> (clip, transcript, translation), computed from what the fixture wrote."""
    with (corpus.cv_dir / "validated.tsv").open() as f:
        sentences = {row["path"]: row["sentence"] for row in csv.DictReader(f, delimiter="\t")}
    out = {}
    for clip, (translation, client, row_split) in corpus.rows.items():
        if row_split in SPLITS[split]:
            spk = hashlib.sha256(client.encode()).hexdigest()[:12]
            out[f"{spk}-{clip[:-4]}"] = (clip, sentences[clip], translation)
    return out


def test_stage1_data_dirs_match_the_corpus(stage1, fake_covost2):
    for split in SPLITS:
        d = stage1 / "data" / f"{split}_en_de"
        assert validate_data_dir(d) == []
        truth = expected_split(fake_covost2, split)
        assert read_kv(d / "text") == {u: t[1] for u, t in truth.items()}
        assert read_kv(d / "translation") == {u: t[2] for u, t in truth.items()}
        assert read_kv(d / "utt2lang") == {u: "de" for u in truth}
        assert read_kv(d / "utt2spk") == {u: u.split("-")[0] for u in truth}
        wav = read_kv(d / "wav.scp")
        for utt, (clip, _, _) in truth.items():
            assert wav[utt] == (f"ffmpeg -nostdin -loglevel error -i {fake_covost2.cv_dir / 'clips' / clip} "
                                "-ac 1 -ar 16000 -f wav - |")
    assert len(read_kv(stage1 / "data" / "train_en_de" / "text")) == 5  # train + train_covost rows
    # The clip that Common Voice validated but CoVoST does not use appears nowhere.
    for split in SPLITS:
        assert "99999" not in (stage1 / "data" / f"{split}_en_de" / "wav.scp").read_text()


def test_wav_scp_pipe_gives_16k_mono(stage1):
    cmd = next(iter(read_kv(stage1 / "data" / "dev_en_de" / "wav.scp").values()))
    assert cmd.endswith("|")
    audio = subprocess.run(cmd[:-1], shell=True, capture_output=True, check=True).stdout
    samples, rate = sf.read(io.BytesIO(audio))
    assert rate == 16000 and samples.ndim == 1 and 1.0 < len(samples) / rate < 10.0


def test_soundfile_reader_writes_mp3_paths(tmp_path, fake_covost2):
    proc = prepare(fake_covost2.cv_dir, fake_covost2.covost_dir, tmp_path / "data", "--audio_reader", "soundfile")
    assert proc.returncode == 0, proc.stderr
    for path in read_kv(tmp_path / "data" / "test_en_de" / "wav.scp").values():
        assert path.endswith(".mp3") and sf.info(path).samplerate == 48000


def prepare(cv_dir: Path, covost_dir: Path, out: Path, *extra: str, lang: str = "de") -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(RECIPE / "local" / "prepare_covost2.py"), "--cv_dir", str(cv_dir),
                           "--covost_dir", str(covost_dir), "--tgt_lang", lang, "--out_dir", str(out), *extra],
                          capture_output=True, text=True)


def copy_corpus(corpus, tmp_path: Path) -> tuple[Path, Path]:
    cv = tmp_path / "en"
    shutil.copytree(corpus.cv_dir, cv)
    covost = tmp_path / "covost"
    shutil.copytree(corpus.covost_dir, covost)
    return cv, covost


def read_rows(path: Path) -> tuple[list[str], list[list[str]]]:
    rows = list(csv.reader(path.open(), delimiter="\t", quoting=csv.QUOTE_NONE, escapechar="\\"))
    return rows[0], rows[1:]


def test_covost_tsv_without_sentence_and_client_id_joins_validated_tsv(tmp_path, fake_covost2, stage1):
    cv, covost = copy_corpus(fake_covost2, tmp_path)
    tsv = covost / "covost_v2.en_de.tsv"
    header, rows = read_rows(tsv)
    keep = [header.index(c) for c in ("path", "translation", "split")]
    write_tsv(tsv, ["path", "translation", "split"], [[r[i] for i in keep] for r in rows])
    proc = prepare(cv, covost, tmp_path / "data")
    assert proc.returncode == 0, proc.stderr
    for split in SPLITS:
        ours, ref = tmp_path / "data" / f"{split}_en_de", stage1 / "data" / f"{split}_en_de"
        for name in ("text", "translation", "utt2spk", "spk2utt"):
            assert read_kv(ours / name) == read_kv(ref / name)


def test_missing_clips_are_skipped_with_a_count(tmp_path, fake_covost2):
    cv, covost = copy_corpus(fake_covost2, tmp_path)
    (cv / "clips" / "common_voice_en_18007.mp3").unlink()
    proc = prepare(cv, covost, tmp_path / "data")
    assert proc.returncode == 0, proc.stderr
    assert f"skipped 1 of 9 rows of {covost / 'covost_v2.en_de.tsv'}: clip missing from clips/" in proc.stderr
    assert len(read_kv(tmp_path / "data" / "train_en_de" / "text")) == 4


def test_bad_covost_input(tmp_path, fake_covost2):
    cv, covost = copy_corpus(fake_covost2, tmp_path)
    tsv = covost / "covost_v2.en_de.tsv"
    header, rows = read_rows(tsv)
    write_tsv(tsv, header, rows + [rows[0]])
    proc = prepare(cv, covost, tmp_path / "data")
    assert proc.returncode == 1
    assert f"{tsv}:11: clip {rows[0][0]} is listed twice (first at line 2)" in proc.stderr
    write_tsv(tsv, header, rows[:3] + [rows[3][:4]] + rows[4:])
    proc = prepare(cv, covost, tmp_path / "data")
    assert f"{tsv}:5: 4 tab-separated fields, the header has 5" in proc.stderr
    tsv.unlink()
    proc = prepare(cv, covost, tmp_path / "data")
    assert f"{tsv} not found; download https://dl.fbaipublicfiles.com/covost/covost_v2.en_de.tsv.tar.gz" in proc.stderr
    proc = prepare(cv, covost, tmp_path / "data", lang="fr")
    assert "--tgt_lang fr: not a CoVoST 2 En->X language; choose one of de ca zh-CN" in proc.stderr
    proc = prepare(tmp_path / "nowhere", fake_covost2.covost_dir, tmp_path / "data")
    assert f"{tmp_path / 'nowhere' / 'clips'} is not a directory; --cv_dir must be the English folder" in proc.stderr


def test_run_sh_rejects_unknown_language(tmp_path):
    recipe = recipe_sandbox(tmp_path, "covost2")
    proc = run(["./run.sh", "--tgt_lang", "xx", "--stage", "1", "--stop_stage", "1"], recipe, check=False)
    assert proc.returncode != 0
    assert "unknown CoVoST 2 target language ['xx']; choose one of: de ca zh-CN" in proc.stderr


@pytest.mark.parametrize("lang,name", [("de", "German"), ("ja", "Japanese"), ("zh-CN", "Chinese")])
def test_language_specific_configs(tmp_path, lang, name):
    """run.sh writes the target language's configs; they load, and name the language's sets and instruction."""
    from blspkd.models import BlspKdConfig
    from blspkd.train.config import TrainConfig
    from blspkd.train.dataset import task_instruction
    from blspkd.utils.config import from_yaml_file

    recipe = recipe_sandbox(tmp_path, "covost2")
    # --help stops blspkd.sh after parsing: nothing runs, but run.sh has written exp/conf/ by then.
    run(["./run.sh", "--tgt_lang", lang, "--help"], recipe)
    for stage in ("pretrain", "finetune"):
        cfg = from_yaml_file(TrainConfig, recipe / "exp" / "conf" / f"{stage}_en_{lang}.yaml")
        assert isinstance(cfg.model, BlspKdConfig)  # checked strictly by the parser
        assert cfg.data.train[0].path == f"dump/train_en_{lang}"
        assert cfg.data.valid == [f"dump/dev_en_{lang}"]
    per_gpu = cfg.data.max_batch_size
    assert per_gpu * cfg.optim.grad_accum * 8 == 128 and cfg.optim.lr == 2e-5
    translation = cfg.data.tasks[0]
    assert task_instruction(translation) == f"Translate the following speech into {name}."
    decode = (recipe / "exp" / "conf" / f"decode_en_{lang}.yaml").read_text()
    assert f"instruction: Translate the following speech into {name}." in decode


@pytest.fixture(scope="module")
def stage2(stage1, tiny_whisper_dir) -> Path:
    """Stage 2 as run.sh sets it (--feats_type raw): the MP3 clips through ffmpeg pipes, written as 16 kHz FLAC."""
    run(["./run.sh", "--tgt_lang", "de", "--stage", "2", "--stop_stage", "2", "--speech_encoder", str(tiny_whisper_dir),
         "--nj", "1"], stage1)
    return stage1


@pytest.mark.slow
def test_stage2_raw_audio_through_ffmpeg_pipes(stage2, monkeypatch):
    from blspkd.data.audio import AudioReader

    monkeypatch.chdir(stage2)  # wav.scp names its files relative to the recipe directory, as feats.scp its arks
    for split in SPLITS:
        dump = stage2 / "dump" / f"{split}_en_de"
        assert validate_data_dir(dump) == [] and not (dump / "feats.scp").exists()
        wav = read_kv(dump / "wav.scp")
        assert sorted(wav) == sorted(read_kv(stage2 / "data" / f"{split}_en_de" / "text"))
        frames = read_kv(dump / "utt2num_frames")
        reader = AudioReader(stage2 / "data" / f"{split}_en_de")
        for key, path in wav.items():
            audio, rate = sf.read(path, dtype="float32")
            assert rate == 16000 and audio.ndim == 1 and (audio == reader.read(key)).all()  # the pipe's output
            assert int(frames[key]) == len(audio) // 160 and 100 < int(frames[key]) < 1000  # 1-10 s of speech
        assert read_kv(dump / "translation") == read_kv(stage2 / "data" / f"{split}_en_de" / "translation")


@pytest.mark.slow
def test_training_and_translating_from_raw_audio(stage2, tiny_llm_dir, tiny_whisper_dir):
    """KD training (tiny config) and translation + BLEU of the test set from the raw dump dirs."""
    tiny = MAIN_ROOT / "egs" / "mini_espeak" / "conf" / "tiny" / "pretrain.yaml"
    out = run(["./run.sh", "--tgt_lang", "de", "--stage", "4", "--stop_stage", "7", "--skip_stages", "5",
               "--speech_encoder", str(tiny_whisper_dir), "--llm", str(tiny_llm_dir), "--ngpu", "0", "--nj", "1",
               "--inference_nj", "1", "--pretrain_config", str(tiny), "--pretrain_args", "--max_steps 2",
               "--inference_model", "exp/pretrain", "--decode_args", "--max_new_tokens 4"], stage2)
    exp = stage2 / "exp" / "pretrain"
    assert (exp / ".completed").read_text().startswith("step 2\n"), out.stdout[-3000:]
    hyp = read_kv(exp / "decode_test_en_de" / "hyp.txt")
    assert sorted(hyp) == sorted(read_kv(stage2 / "dump" / "test_en_de" / "text"))
    assert "test_en_de" in (stage2 / "RESULTS.md").read_text()
