"""Whisper log-mel against transformers, audio reading (pipes, segments, other rates, stereo, bad audio), and the
sharded, resumable extract_feats CLI with its duration filter."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from fixtures.audio import synth_speech, write_data_dir

from blspkd.bin import extract_feats
from blspkd.data.audio import AudioError, AudioReader
from blspkd.data.feats_io import load_scp, write_feats
from blspkd.data.kaldi_dir import DataDirError, read_kv, validate_data_dir, write_kv
from blspkd.data.mel import WhisperLogMel

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module", params=[80, 128])
def fe_dir(request, tmp_path_factory) -> Path:
    from transformers import WhisperFeatureExtractor

    d = tmp_path_factory.mktemp(f"fe{request.param}")
    WhisperFeatureExtractor(feature_size=request.param).save_pretrained(str(d))
    return d


@pytest.fixture(scope="module")
def fe80_dir(tmp_path_factory) -> Path:
    from transformers import WhisperFeatureExtractor

    d = tmp_path_factory.mktemp("fe80")
    WhisperFeatureExtractor(feature_size=80).save_pretrained(str(d))
    return d


def _speech_waves(data_dir: Path) -> list[np.ndarray]:
    return [sf.read(p, dtype="float32")[0] for p in read_kv(data_dir / "wav.scp").values()]


def test_log_mel_equals_transformers_unpadded(fe_dir, speech_data_dir):
    """Reference: WhisperFeatureExtractor(x, sampling_rate=16000, padding="do_not_pad") on the real signal."""
    from transformers import WhisperFeatureExtractor

    fe = WhisperFeatureExtractor.from_pretrained(str(fe_dir))
    mel = WhisperLogMel.from_pretrained(fe_dir)
    assert mel.n_mels == fe.feature_size
    rng = np.random.default_rng(0)
    waves = _speech_waves(speech_data_dir)[:3] + [
        (0.1 * rng.standard_normal(n)).astype(np.float32) for n in (201, 4000, 2 * 16000 + 77)
    ]
    for x in waves:
        ours = mel(x)
        ref = fe(x, sampling_rate=16000, padding="do_not_pad", return_tensors="np").input_features[0].T
        assert ours.shape == (len(x) // 160, fe.feature_size) and ours.dtype == np.float32
        np.testing.assert_allclose(ours, ref, atol=1e-5, rtol=0)


def test_log_mel_matches_padded_call_on_interior_frames(fe80_dir, speech_data_dir):
    """The default call pads to 30 s with zeros: frames whose 400-sample window lies inside the signal are unchanged."""
    from transformers import WhisperFeatureExtractor

    fe = WhisperFeatureExtractor.from_pretrained(str(fe80_dir))
    mel = WhisperLogMel.from_pretrained(fe80_dir)
    for x in _speech_waves(speech_data_dir)[:2]:
        padded = fe(x, sampling_rate=16000, return_tensors="np").input_features[0].T
        assert padded.shape == (3000, 80)
        inside = (len(x) - 200) // 160 + 1
        np.testing.assert_allclose(mel(x)[:inside], padded[:inside], atol=1e-5, rtol=0)


def test_log_mel_errors(tmp_path, fe80_dir):
    with pytest.raises(FileNotFoundError, match=r"preprocessor_config.json not found: --feature_extractor must be"):
        WhisperLogMel.from_pretrained(tmp_path)
    mel = WhisperLogMel.from_pretrained(fe80_dir)
    with pytest.raises(ValueError, match="waveform of 200 samples is too short; at least 201 are needed"):
        mel(np.zeros(200, np.float32))


def _sox(*args):
    subprocess.run(["sox", *map(str, args)], check=True, capture_output=True)


def _snr_db(ref: np.ndarray, x: np.ndarray) -> float:
    n = min(len(ref), len(x))
    return 10 * np.log10(np.sum(ref[:n] ** 2) / np.sum((ref[:n] - x[:n]) ** 2))


def test_audio_reader_pipes_rates_stereo(tmp_path):
    base = synth_speech(tmp_path / "base.wav", "pipes and sample rates", rate=16000)
    x = sf.read(base, dtype="float32")[0]
    s44 = synth_speech(tmp_path / "s44.wav", "pipes and sample rates", rate=44100)
    ref44 = tmp_path / "s44_to16.wav"
    _sox(s44, "-r", 16000, ref44)
    s8 = tmp_path / "s8.wav"
    _sox(base, "-r", 8000, s8)
    ref8 = tmp_path / "s8_to16.wav"
    _sox(s8, "-r", 16000, ref8)
    stereo = tmp_path / "stereo.wav"
    sf.write(stereo, np.stack([x, 0.5 * x], axis=1), 16000, subtype="FLOAT")
    wav = {
        "a-path": str(base), "b-cat": f"cat {base} |", "c-sox": f"sox {base} -t wav - |", "d-8k": str(s8),
        "e-44k": str(s44), "f-stereo": str(stereo),
    }
    d = write_data_dir(tmp_path / "data", wav, {u: "X" for u in wav}, {u: u for u in wav})
    reader = AudioReader(d)
    got = dict(reader.iter(reader.utterances()))
    for u in ("a-path", "b-cat", "c-sox"):
        np.testing.assert_array_equal(got[u], x)
    n8 = sf.info(s8).frames
    assert len(got["d-8k"]) == 2 * n8
    assert _snr_db(sf.read(ref8, dtype="float32")[0], got["d-8k"]) > 25  # sox's resampler as the reference
    n44 = sf.info(s44).frames
    assert len(got["e-44k"]) == -(-n44 * 160 // 441)
    assert _snr_db(sf.read(ref44, dtype="float32")[0], got["e-44k"]) > 25
    np.testing.assert_allclose(got["f-stereo"], 0.75 * x, atol=1e-7)
    assert all(w.dtype == np.float32 and w.ndim == 1 for w in got.values())
    assert (reader.stats.read, reader.stats.resampled, reader.stats.downmixed) == (6, 2, 1)


def test_audio_reader_segments_from_a_pipe(tmp_path):
    a = synth_speech(tmp_path / "a.wav", "first part", rate=16000)
    b = synth_speech(tmp_path / "b.wav", "second part", rate=16000)
    xa, xb = sf.read(a, dtype="float32")[0], sf.read(b, dtype="float32")[0]
    d = tmp_path / "data"
    write_data_dir(d, {"rec": f"sox {a} {b} -t wav - |"}, {"s-u1": "FIRST PART", "s-u2": "SECOND PART"},
                   {"s-u1": "s", "s-u2": "s"})
    t1 = len(xa) / 16000
    write_kv(d / "segments", {"s-u1": f"rec 0.0 {t1}", "s-u2": f"rec {t1} {t1 + len(xb) / 16000}"})
    assert validate_data_dir(d) == []
    reader = AudioReader(d)
    got = dict(reader.iter(reader.utterances()))
    np.testing.assert_array_equal(got["s-u1"], xa)
    np.testing.assert_array_equal(got["s-u2"], xb)
    write_kv(d / "segments", {"s-u1": "rec 0.0 1.0", "s-u2": f"rec 1.0 {t1 + len(xb) / 16000 + 0.5}"})
    with pytest.raises(AudioError) as e:
        AudioReader(d).read("s-u2")
    assert str(e.value) == (
        f"{d}/segments:2: utterance 's-u2' spans 1.0-{t1 + len(xb) / 16000 + 0.5} s but recording 'rec' lasts "
        f"{(len(xa) + len(xb)) / 16000:.3f} s. Fix: correct the segment times"
    )


def test_bad_audio_errors_name_the_line_or_are_skipped_and_counted(tmp_path):
    good = synth_speech(tmp_path / "good.wav", "good audio", rate=16000)
    (tmp_path / "corrupt.wav").write_bytes(b"RIFF this is not audio at all" * 10)
    wav = {"u1": str(good), "u2": "/nope/missing.wav", "u3": str(tmp_path / "corrupt.wav"),
           "u4": "sox /nope/x.wav -t wav - |", "u5": "true |"}
    d = write_data_dir(tmp_path / "data", wav, {u: "X" for u in wav}, {u: "s" for u in wav})
    fix = ("Fix: correct the wav.scp line, or drop the utterance (utils/fix_data_dir.sh after removing it), "
           "or pass --skip_bad_audio true")
    reader = AudioReader(d)
    errors = {}
    for u in ("u2", "u3", "u4", "u5"):
        with pytest.raises(AudioError) as e:
            reader.read(u)
        errors[u] = str(e.value)
    assert errors["u2"] == f"{d}/wav.scp:2: recording 'u2': file not found: /nope/missing.wav. {fix}"
    assert errors["u3"].startswith(f"{d}/wav.scp:3: recording 'u3': cannot decode file {tmp_path}/corrupt.wav: ")
    assert errors["u3"].endswith(fix)
    assert errors["u4"].startswith(
        f"{d}/wav.scp:4: recording 'u4': command 'sox /nope/x.wav -t wav -' failed with exit code 2: sox FAIL")
    assert errors["u5"] == f"{d}/wav.scp:5: recording 'u5': command 'true' wrote no audio. {fix}"
    skipping = AudioReader(d, skip_bad=True)
    assert [u for u, _ in skipping.iter(skipping.utterances())] == ["u1"]
    assert dict(skipping.stats.skipped) == {"unreadable audio": 4}


# ------------------------------------------------------------------------------------------------ extract_feats CLI


def _extract(data, out, fe, n, j, *extra):
    return extract_feats.main(["--data_dir", str(data), "--out_dir", str(out), "--feature_extractor", str(fe),
                               "--num_shards", str(n), "--shard", str(j), *map(str, extra)])


def _merge(data, out, n):
    return extract_feats.main(["--data-dir", str(data), "--out-dir", str(out), "--num-shards", str(n),
                               "--merge", "true"])


def _log_lines(capsys) -> list[str]:
    """Messages logged by the entry points (setup_logging replaces root handlers, so read stderr, not caplog)."""
    return [ln.split(": ", 1)[1] for ln in capsys.readouterr().err.splitlines() if ") INFO: " in ln]


def test_extract_shards_merge_and_resume(tmp_path, speech_data_dir, fe80_dir, capsys):
    data = tmp_path / "data"
    shutil.copytree(speech_data_dir, data)
    write_kv(data / "instruction", {u: "Repeat." for u in read_kv(data / "utt2spk")})
    out = tmp_path / "dump"
    for j in (1, 2):
        assert _extract(data, out, fe80_dir, 2, j) == 0
    assert _merge(data, out, 2) == 0
    assert validate_data_dir(out) == []
    assert (out / ".completed").is_file()
    for name in ("text", "utt2spk", "spk2utt", "wav.scp", "instruction"):
        assert (out / name).read_text() == (data / name).read_text()
    feats = load_scp(out / "feats.scp")
    mel = WhisperLogMel.from_pretrained(fe80_dir)
    reader = AudioReader(data)
    frames = read_kv(out / "utt2num_frames")
    assert sorted(feats) == sorted(read_kv(data / "utt2spk"))
    for utt in feats:
        wave = reader.read(utt)
        np.testing.assert_array_equal(feats[utt], mel(wave))
        assert int(frames[utt]) == len(wave) // 160 == feats[utt].shape[0]
    # shard J: the J-th contiguous block of the sorted utterance ids (blspkd/utils/shards.py)
    utts = sorted(read_kv(data / "utt2spk"))
    assert [sorted(read_kv(out / "shards" / f"feats.{j}.scp")) for j in (1, 2)] == [utts[:len(utts) // 2],
                                                                                   utts[len(utts) // 2:]]

    # "kill" shard 2: delete its outputs; rerunning both jobs redoes only shard 2
    ark1 = out / "shards" / "feats.1.ark"
    mtime1 = ark1.stat().st_mtime_ns
    for f in (out / "shards").glob("*.2*"):
        f.unlink()
    (out / "shards" / ".completed.2").unlink(missing_ok=True)
    scp_before = (out / "feats.scp").read_text()
    capsys.readouterr()
    for j in (1, 2):
        assert _extract(data, out, fe80_dir, 2, j) == 0
    msgs = _log_lines(capsys)
    assert any(m.startswith("shard 1/2 already done") for m in msgs)
    assert not any(m.startswith("shard 1/2: ") and "kept" in m for m in msgs)
    assert any(m.startswith("shard 2/2: ") and "real time per core" in m for m in msgs)
    assert ark1.stat().st_mtime_ns == mtime1
    assert _merge(data, out, 2) == 0
    assert (out / "feats.scp").read_text() == scp_before

    # a changed setting recomputes the shard instead of reusing it
    _extract(data, out, fe80_dir, 2, 1, "--min_duration", 0.1)
    assert any("settings or inputs changed" in m for m in _log_lines(capsys))
    # ... and so does other audio for the shard's utterances under the same settings
    wav = read_kv(data / "wav.scp")
    first = sorted(wav)[0]
    write_kv(data / "wav.scp", {**wav, first: f"cat {wav[first]} |"})
    _extract(data, out, fe80_dir, 2, 1, "--min_duration", 0.1)
    assert any("settings or inputs changed" in m for m in _log_lines(capsys))
    _extract(data, out, fe80_dir, 2, 1, "--min_duration", 0.1)
    assert any(m.startswith("shard 1/2 already done") for m in _log_lines(capsys))


def test_merge_with_a_missing_shard_says_what_to_run(tmp_path, speech_data_dir, fe80_dir, capsys):
    out = tmp_path / "dump"
    _extract(speech_data_dir, out, fe80_dir, 3, 2)
    capsys.readouterr()
    assert _merge(speech_data_dir, out, 3) == 1
    assert capsys.readouterr().err == (
        f"python -m blspkd.bin.extract_feats: error: {out}/shards: shard(s) 1, 3 of 3 are not done (no .completed.J "
        f"marker). Fix: run python -m blspkd.bin.extract_feats --data_dir {speech_data_dir} --out_dir {out} "
        "--feature_extractor DIR --num_shards 3 --shard J for each missing J (stage 2 again does exactly that), then "
        "merge again\n"
    )
    assert not (out / ".completed").exists()


def test_duration_filter_counts(tmp_path, speech_data_dir, fe80_dir, capsys):
    wav = read_kv(speech_data_dir / "wav.scp")
    dur = sorted((sf.info(p).frames / 16000, u) for u, p in wav.items())
    lo = round((dur[0][0] + dur[1][0]) / 2, 3)
    hi = round((dur[-1][0] + dur[-2][0]) / 2, 3)
    out = tmp_path / "dump"
    for j in (1, 2, 3):
        _extract(speech_data_dir, out, fe80_dir, 3, j, "--min_duration", lo,
                 "--max_duration", hi)
    _merge(speech_data_dir, out, 3)
    complete = json.loads((out / ".completed").read_text())["totals"]
    assert complete["kept"] == len(wav) - 2 and complete["utterances"] == len(wav)
    assert complete["dropped"] == {f"shorter than min_duration {lo} s": 1, f"longer than max_duration {hi} s": 1}
    assert sorted(read_kv(out / "text")) == sorted(u for _, u in dur[1:-1])
    msgs = _log_lines(capsys)
    assert f"dropped 1 utterance(s): shorter than min_duration {lo} s" in msgs
    assert validate_data_dir(out) == []


def test_cli_reports_user_errors_without_traceback(tmp_path, fe80_dir):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    r = subprocess.run([sys.executable, "-m", "blspkd.bin.extract_feats", "--data_dir", str(tmp_path / "nope"),
                        "--out_dir", str(tmp_path / "o"), "--feature_extractor", str(fe80_dir), "--num_shards", "1",
                        "--shard", "1"], capture_output=True, text=True, env=env)
    assert r.returncode == 1
    assert "Traceback" not in r.stderr
    assert f"{tmp_path}/nope is not a valid data dir" in r.stderr


@pytest.mark.parametrize("feats_type", ["fbank", "raw"])
def test_unreadable_audio_fails_or_is_skipped_with_a_count(tmp_path, speech_data_dir, fe80_dir, capsys, feats_type):
    data = tmp_path / "data"
    shutil.copytree(speech_data_dir, data)
    wav = read_kv(data / "wav.scp")
    bad = sorted(wav)[2]
    write_kv(data / "wav.scp", {**wav, bad: "/nope/gone.wav"})
    assert _extract(data, tmp_path / "fail", fe80_dir, 1, 1, "--feats_type", feats_type) == 1
    assert capsys.readouterr().err.startswith(f"python -m blspkd.bin.extract_feats: error: {data}/wav.scp:3: recording "
                                              f"'{bad}': file not found: /nope/gone.wav. Fix: ")
    out = tmp_path / "dump"
    assert _extract(data, out, fe80_dir, 1, 1, "--skip_bad_audio", "true", "--feats_type", feats_type) == 0
    assert _merge(data, out, 1) == 0
    complete = json.loads((out / ".completed").read_text())["totals"]
    assert (complete["kept"], complete["dropped"]) == (len(wav) - 1, {"unreadable audio": 1})
    assert bad not in read_kv(out / "text")
    assert "dropped 1 utterance(s): unreadable audio" in _log_lines(capsys)


def test_scp_with_a_missing_ark_names_the_line_and_the_fix(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_feats("dump/a/feats.1.ark", "dump/a/feats.scp", [("u1", np.zeros((3, 80))), ("u2", np.ones((2, 80)))])
    assert load_scp("dump/a/feats.scp")["u2"].shape == (2, 80)  # relative to the directory that wrote it
    monkeypatch.chdir(tmp_path / "dump")
    with pytest.raises(DataDirError, match=r"a/feats.scp:1: ark file 'dump/a/feats.1.ark' of key 'u1' not found "
                                           r"\(looked in .*dump\)\. Relative paths in an scp are relative to the "
                                           r"recipe directory"):
        load_scp("a/feats.scp")
