"""``--feats_type raw``: stage 2 writing validated 16 kHz mono audio, the batched log-mel on the model's device against
the dumped features, and training/decoding from a raw dump dir against the same from an fbank dump dir."""
from __future__ import annotations

import logging
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from fixtures.audio import synth_speech, write_data_dir

from blspkd.bin import extract_feats
from blspkd.data.audio import AudioReader
from blspkd.data.audio_dump import RawAudio
from blspkd.data.collate import BlspKdCollator
from blspkd.data.feats_io import load_scp
from blspkd.data.kaldi_dir import DataDirError, read_kv, validate_data_dir, write_kv
from blspkd.data.mel import WhisperLogMel, speech_to_feats
from blspkd.train.config import TaskConfig
from blspkd.train.dataset import TrainingData
from blspkd.utils.config import ConfigError


def _extract(data, out, fe, n, j, *extra):
    return extract_feats.main(["--data_dir", str(data), "--out_dir", str(out), "--feature_extractor", str(fe),
                               "--num_shards", str(n), "--shard", str(j), *map(str, extra)])


def _dump(data: Path, out: Path, fe: Path, *extra, shards: int = 2) -> Path:
    for j in range(1, shards + 1):
        assert _extract(data, out, fe, shards, j, *extra) == 0
    assert extract_feats.main(["--data_dir", str(data), "--out_dir", str(out), "--num_shards", str(shards),
                               "--merge", "true"]) == 0
    return out


@pytest.fixture(scope="module")
def dumps(tmp_path_factory, speech_data_dir, tiny_whisper_dir) -> dict[str, Path]:
    """The 6 espeak utterances (16 kHz, 16-bit) dumped both ways, 2 shards each."""
    root = tmp_path_factory.mktemp("raw")
    return {
        "fbank": _dump(speech_data_dir, root / "fbank", tiny_whisper_dir),
        "raw": _dump(speech_data_dir, root / "raw", tiny_whisper_dir, "--feats_type", "raw"),
        "data": speech_data_dir,
    }


def test_batched_log_mel_equals_the_per_utterance_log_mel(tiny_whisper_dir, speech_data_dir):
    """Rows of very different lengths in one zero-padded batch: each row equals WhisperLogMel on its own samples
    (which tests/test_features.py checks against transformers), frames past a row's length are zero."""
    mel = WhisperLogMel.from_pretrained(tiny_whisper_dir)
    rng = np.random.default_rng(0)
    waves = [sf.read(p, dtype="float32")[0] for p in read_kv(speech_data_dir / "wav.scp").values()][:3]
    waves += [(0.1 * rng.standard_normal(n)).astype(np.float32) for n in (201, 359, 4000, 16000 * 5 + 77)]
    speech = torch.nn.utils.rnn.pad_sequence([torch.from_numpy(w) for w in waves], batch_first=True)
    feats, lengths = mel.batch(speech, torch.tensor([len(w) for w in waves]))
    assert feats.shape == (len(waves), max(len(w) for w in waves) // 160, mel.n_mels)
    for i, w in enumerate(waves):
        ref = mel(w)
        assert int(lengths[i]) == ref.shape[0] == len(w) // 160
        np.testing.assert_allclose(feats[i, : ref.shape[0]].numpy(), ref, rtol=0, atol=1e-5)
        assert not feats[i, ref.shape[0]:].any()
    with pytest.raises(ValueError, match="waveform of 200 samples is too short; at least 201 are needed"):
        mel.batch(torch.zeros(2, 300), torch.tensor([300, 200]))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_log_mel_on_the_gpu_equals_the_cpu_features(dumps, tiny_whisper_dir):
    """What training on a GPU computes from a raw dump dir, against the fbank dump of the same audio."""
    fbank = load_scp(dumps["fbank"] / "feats.scp")
    audio = RawAudio(dumps["raw"])
    keys = sorted(audio)
    batch = BlspKdCollator._pad_speech([{"key": k, "speech": audio[k]} for k in keys])
    feats, lengths = WhisperLogMel.from_pretrained(tiny_whisper_dir).batch(batch["speech"].cuda(),
                                                                           batch["speech_lengths"].cuda())
    assert feats.device.type == "cuda"
    for i, k in enumerate(keys):
        np.testing.assert_allclose(feats[i, : int(lengths[i])].cpu().numpy(), fbank[k], rtol=0, atol=1e-4)


def test_raw_dump_dir_files(dumps):
    raw, data = dumps["raw"], dumps["data"]
    assert (raw / ".completed").is_file() and validate_data_dir(raw) == []
    assert not (raw / "feats.scp").exists()
    for name in ("text", "utt2spk", "spk2utt"):
        assert (raw / name).read_text() == (data / name).read_text()
    reader = AudioReader(data)
    wav = read_kv(raw / "wav.scp")
    samples = read_kv(raw / "utt2num_samples")
    frames = read_kv(raw / "utt2num_frames")
    assert list(wav) == list(read_kv(data / "text"))
    assert frames == read_kv(dumps["fbank"] / "utt2num_frames")
    for utt, path in wav.items():
        info = sf.info(path)
        assert (info.format, info.subtype, info.samplerate, info.channels) == ("FLAC", "PCM_16", 16000, 1)
        assert Path(path).parent.name in ("audio.1", "audio.2") and Path(path).name == f"{utt}.flac"
        source = reader.read(utt)
        np.testing.assert_array_equal(sf.read(path, dtype="float32")[0], source)  # 16-bit in, 16-bit out: exact
        assert int(samples[utt]) == len(source) and int(frames[utt]) == len(source) // 160


def test_on_device_log_mel_equals_the_dumped_features(dumps, tiny_whisper_dir):
    """The training path (TrainingData item -> collator padding -> speech_to_feats) on a raw dump dir gives the
    features stage 2 dumps for fbank, within 1e-4."""
    fbank = load_scp(dumps["fbank"] / "feats.scp")
    data = TrainingData([dumps["raw"]], [TaskConfig()])
    keys = sorted(data.eligible[0])
    items = [data[(0, k, 0)] for k in keys]
    assert all("speech" in it and "feats" not in it for it in items)
    batch = {**BlspKdCollator._pad_speech(items), "input_ids": torch.zeros(1)}
    out = speech_to_feats(batch, WhisperLogMel.from_pretrained(tiny_whisper_dir))
    assert set(out) == {"feats", "feats_lengths", "input_ids"}
    worst = 0.0
    for i, k in enumerate(keys):
        n = int(out["feats_lengths"][i])
        assert n == fbank[k].shape[0]
        worst = max(worst, float(np.abs(out["feats"][i, :n].numpy() - fbank[k]).max()))
    assert worst <= 1e-4, worst


def test_segments_pipes_rates_and_the_duration_filter(tmp_path, tiny_whisper_dir):
    """A 22.05 kHz stereo recording read through a pipe and cut by segments: every segment becomes its own 16 kHz
    mono file holding what the audio reader gives (rounded to 16 bits), the recording tables are gone, and the duration
    filter drops the same utterances as with fbank."""
    long = synth_speech(tmp_path / "long.wav", "one two three four five six seven eight nine ten", rate=22050,
                        channels=2)
    short = synth_speech(tmp_path / "short.wav", "hello there", rate=16000)
    wav = {"rec1": f"sox {long} -t wav - |", "rec2": str(short)}
    data = write_data_dir(tmp_path / "data", wav, {"spk-a": "ONE TWO", "spk-b": "THREE", "spk-c": "HELLO THERE",
                                                   "spk-d": "A"}, {u: "spk" for u in ("spk-a", "spk-b", "spk-c",
                                                                                       "spk-d")})
    duration = sf.info(short).duration
    write_kv(data / "segments", {"spk-a": "rec1 0.00 1.20", "spk-b": "rec1 1.20 2.40",
                                 "spk-c": f"rec2 0.00 {duration:.3f}", "spk-d": "rec1 2.40 2.45"})
    write_kv(data / "reco2dur", {"rec1": "3.0", "rec2": f"{duration:.3f}"})
    (data / "wav.scp").unlink()
    write_kv(data / "wav.scp", wav)
    filt = ("--min_duration", 0.1)
    raw = _dump(data, tmp_path / "raw", tiny_whisper_dir, "--feats_type", "raw", "--audio_format", "wav", *filt)
    fbank = _dump(data, tmp_path / "fbank", tiny_whisper_dir, *filt)
    assert list(read_kv(raw / "utt2num_frames")) == list(read_kv(fbank / "utt2num_frames")) == ["spk-a", "spk-b",
                                                                                                 "spk-c"]
    assert not (raw / "segments").exists() and not (raw / "reco2dur").exists()
    assert validate_data_dir(raw) == []
    reader = AudioReader(data)
    waves = RawAudio(raw)
    for utt in ("spk-a", "spk-b", "spk-c"):
        assert sf.info(read_kv(raw / "wav.scp")[utt]).format == "WAV"
        source = reader.read(utt)
        assert waves[utt].shape == source.shape
        np.testing.assert_allclose(waves[utt], source, rtol=0, atol=0.5 / 32768 + 1e-7)


def test_a_changed_raw_file_is_an_error_naming_it(tmp_path, dumps):
    """(Unreadable source audio follows the fbank rules: test_features.py's test runs for both feature types.)"""
    out = tmp_path / "raw"
    shutil.copytree(dumps["raw"], out)
    first = sorted(read_kv(out / "wav.scp"))[0]
    path = str(out / "shards" / Path(read_kv(out / "wav.scp")[first]).relative_to(dumps["raw"] / "shards"))
    write_kv(out / "wav.scp", {**read_kv(out / "wav.scp"), first: path})
    sf.write(path, np.zeros(800, dtype=np.int16), 16000, format="FLAC", subtype="PCM_16")
    with pytest.raises(DataDirError, match=rf"{out}/wav.scp: {re.escape(path)} of utterance {first} is 800 samples x "
                                           r"1 channel\(s\) at 16000 Hz, utt2num_samples says \d+ x 1 at 16000 Hz; "
                                           r"re-run stage 2 for this dir \(--feats_type raw\)"):
        RawAudio(out)[first]


def test_resume_skips_a_done_raw_shard(tmp_path, speech_data_dir, tiny_whisper_dir, capsys):
    out = tmp_path / "raw"
    _extract(speech_data_dir, out, tiny_whisper_dir, 2, 1, "--feats_type", "raw")
    capsys.readouterr()
    _extract(speech_data_dir, out, tiny_whisper_dir, 2, 1, "--feats_type", "raw")
    assert "shard 1/2 already done" in capsys.readouterr().err
    _extract(speech_data_dir, out, tiny_whisper_dir, 2, 1)  # other feats_type: redone
    assert "settings or inputs changed" in capsys.readouterr().err


def test_mixing_raw_and_fbank_dirs_is_refused(dumps):
    with pytest.raises(ConfigError, match=r"dump dirs of both feature types in one set: .*\(fbank\), .*\(raw\); "
                                          "run stage 2 of every dir with the same --feats_type"):
        TrainingData([dumps["fbank"], dumps["raw"]], [TaskConfig()])


LOSS = re.compile(r"step (\d+)/\d+, epoch \d+, (.*?), lr ")
VALID = re.compile(r"validation at step \d+ \(\d+ utterances, [\d.]+ s\): (.*)")


def test_training_and_decoding_from_raw_equal_fbank(dumps, tiny_whisper_dir, tiny_llm_dir, tmp_path, caplog):
    """A short training run gives the same logged losses and weights from either dump dir, and decoding the raw dump
    dir gives the hypotheses of the fbank one."""
    from safetensors.torch import load_file

    from blspkd.decode import DecodeConfig, load_model
    from blspkd.decode import run as decode
    from blspkd.train.config import TrainConfig
    from blspkd.train.trainer import run
    from blspkd.utils.config import parse_config

    conf = Path(__file__).resolve().parents[1] / "egs/mini_espeak/conf/tiny/pretrain.yaml"
    losses, weights = {}, {}
    for kind in ("fbank", "raw"):
        exp = tmp_path / kind
        caplog.clear()
        with caplog.at_level(logging.INFO):
            run(parse_config(TrainConfig, [
                "--config", str(conf), "--exp_dir", str(exp), "--data.train", f"[{{path: {dumps[kind]}}}]",
                "--data.valid", f"[{dumps[kind]}]", "--model.speech_encoder", str(tiny_whisper_dir),
                "--model.llm", str(tiny_llm_dir), "--max_steps", "3", "--valid_interval", "3",
                "--tensorboard", "false"]))
        losses[kind] = LOSS.findall(caplog.text) + VALID.findall(caplog.text)
        weights[kind] = load_file(str(exp / "model" / "model.safetensors"))
    assert len(losses["fbank"]) == 4 and losses["raw"] == losses["fbank"]
    for k, v in weights["fbank"].items():
        torch.testing.assert_close(weights["raw"][k], v, rtol=1e-5, atol=1e-6, msg=k)

    model = load_model(tmp_path / "fbank" / "model", "cpu")
    hyps = {}
    for kind in ("fbank", "raw"):
        out = tmp_path / f"decode_{kind}"
        decode(DecodeConfig(model_dir=str(tmp_path / "fbank" / "model"), dump_dir=str(dumps[kind]),
                            out_dir=str(out), max_new_tokens=6, batch_size=4), model=model)
        hyps[kind] = (out / "hyp.txt").read_text(encoding="utf-8")
    assert hyps["raw"] == hyps["fbank"] and len(hyps["raw"].splitlines()) == 6


def test_encoder_cache_of_a_raw_dump_dir_equals_the_fbank_one(dumps, tiny_whisper_dir, tmp_path):
    """--encoder_cache true on a raw dump dir: the encoder reads the log-mel computed from the audio."""
    from blspkd.data.encoder_cache import dump_encoder_outputs, encoder_record, load_encoder_outputs
    from blspkd.models.speech_encoder import WhisperSpeechEncoder

    record = encoder_record(WhisperSpeechEncoder(str(tiny_whisper_dir)), str(tiny_whisper_dir))
    cached = {}
    for kind in ("fbank", "raw"):
        shutil.copytree(dumps[kind], tmp_path / kind)
        dump_encoder_outputs(tmp_path / kind, str(tiny_whisper_dir), batch_frames=400)
        cached[kind] = load_encoder_outputs(tmp_path / kind, record)
    assert sorted(cached["raw"]) == sorted(cached["fbank"]) and len(cached["raw"]) == 6
    for k in cached["fbank"]:
        np.testing.assert_allclose(cached["raw"][k], cached["fbank"][k], rtol=0, atol=2e-3)
