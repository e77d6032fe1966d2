"""The inference command (audio files in any format/rate -> text) and the export round trip, on a tiny random model."""
from __future__ import annotations

import json
import shutil
import subprocess

import numpy as np
import pytest
import soundfile as sf
import torch
from fixtures.audio import synth_speech

from blspkd.bin import infer
from blspkd.data.audio import read_audio
from blspkd.data.mel import WhisperLogMel
from blspkd.decode import DecodeConfig, run
from blspkd.export import ExportError, export_model

SENTENCE = "the quick brown fox jumps over the lazy dog"


@pytest.fixture(scope="module")
def wav_22k(tmp_path_factory):
    """espeak-ng's own rate (22.05 kHz), so reading resamples."""
    return synth_speech(tmp_path_factory.mktemp("infer") / "fox_22k.wav", SENTENCE, rate=22050)


@pytest.fixture(scope="module")
def model(tiny_model_dir):
    from blspkd.decode import load_model

    return load_model(tiny_model_dir, "cpu")


def _reference_text(model, model_dir, wave_16k: np.ndarray, instruction: str, max_new_tokens: int) -> str:
    feats = torch.from_numpy(WhisperLogMel.from_pretrained(model_dir)(wave_16k))[None]
    text = model.generate(feats, torch.tensor([feats.shape[1]]), [instruction], max_new_tokens=max_new_tokens)[0]
    return " ".join(text.split())


def test_read_audio_resamples_like_sox(wav_22k, tmp_path):
    ours = read_audio(str(wav_22k), 16000)
    sox_16k = tmp_path / "sox.wav"
    subprocess.run(["sox", str(wav_22k), "-r", "16000", str(sox_16k)], check=True)
    ref, rate = sf.read(sox_16k, dtype="float32")
    assert rate == 16000 and ours.dtype == np.float32
    assert abs(len(ours) - len(ref)) <= 2
    n = min(len(ours), len(ref))
    assert np.corrcoef(ours[:n], ref[:n])[0, 1] > 0.99


def test_single_file_is_streamed(model, tiny_model_dir, wav_22k, capsys):
    rc = infer.main(["--model", str(tiny_model_dir), "--audio", str(wav_22k), "--max_new_tokens", "6",
                     "--device", "cpu"])
    assert rc == 0
    streamed = capsys.readouterr().out
    assert streamed.endswith("\n")
    expected = _reference_text(model, tiny_model_dir, read_audio(str(wav_22k), 16000),
                               "Repeat the following sentence exactly.", 6)
    assert " ".join(streamed.split()) == expected


@pytest.mark.parametrize("task, instruction", [("transcription", "Repeat the following sentence exactly."),
                                               ("answer", None), ("plain", None)])
def test_task_picks_the_instruction(tiny_model_dir, wav_22k, monkeypatch, capsys, task, instruction):
    """What reaches the model, streamed (one file) and not: --task answer/plain have no text instruction."""
    from blspkd.api import SpeechLLM

    seen = []
    run_batch = SpeechLLM.run_batch

    def spy(self, speeches, instructions, kwargs):
        seen.extend(instructions)
        return run_batch(self, speeches, instructions, kwargs)

    monkeypatch.setattr(SpeechLLM, "run_batch", spy)
    for extra in ([], ["--no_stream"]):
        assert infer.main(["--model", str(tiny_model_dir), "--audio", str(wav_22k), "--task", task,
                           "--max_new_tokens", "2", *extra]) == 0
    assert seen == [instruction, instruction]
    capsys.readouterr()


def test_several_files_any_format(model, tiny_model_dir, wav_22k, tmp_path, capsys):
    flac = tmp_path / "fox.flac"
    subprocess.run(["sox", str(wav_22k), "-r", "44100", "-c", "2", str(flac)], check=True)  # stereo 44.1 kHz
    m4a = tmp_path / "fox.m4a"  # a container libsndfile does not read: goes through ffmpeg
    p = subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-i", str(wav_22k), "-c:a", "aac", str(m4a)])
    files = [wav_22k, flac] + ([m4a] if p.returncode == 0 else [])
    rc = infer.main(["--model", str(tiny_model_dir), "--audio", *map(str, files), "--task", "continuation",
                     "--max_new_tokens", "5", "--batch_size", "2"])
    assert rc == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split("\t")[0] for line in lines] == [str(f) for f in files]
    for f, line in zip(files, lines):
        expected = _reference_text(model, tiny_model_dir, read_audio(str(f), 16000),
                                   "Continue the following text in a coherent style: ", 5)
        assert line.split("\t", 1)[1] == expected


def test_unreadable_audio_errors_name_the_file(tiny_model_dir, tmp_path, capsys):
    bad = tmp_path / "notes.wav"
    bad.write_text("this is not audio\n")
    assert infer.main(["--model", str(tiny_model_dir), "--audio", str(bad)]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"python -m blspkd.bin.infer: error: cannot read audio file {bad}: neither soundfile nor "
                          "ffmpeg can decode it "
                          f"(cannot decode file {bad}: ")
    missing = tmp_path / "missing.flac"
    assert infer.main(["--model", str(tiny_model_dir), "--audio", str(missing)]) == 1
    assert capsys.readouterr().err == (f"python -m blspkd.bin.infer: error: cannot read audio file {missing}: file not "
                                       "found\n")
    long = tmp_path / "long.wav"
    sf.write(long, np.zeros(16000 * 31, dtype=np.float32), 16000)
    assert infer.main(["--model", str(tiny_model_dir), "--audio", str(long)]) == 1
    assert capsys.readouterr().err.startswith(f"python -m blspkd.bin.infer: error: audio file {long} lasts 31.0 s, "
                                              "longer than the 30 s the Whisper encoder takes; split it")
    assert infer.main(["--model", str(tmp_path), "--audio", str(bad)]) == 1
    assert f"python -m blspkd.bin.infer: error: {tmp_path} is not a BLSP-KD model" in capsys.readouterr().err


def test_export_round_trip_decodes_identically(model, tiny_model_dir, decode_dump_dir, tmp_path, wav_22k, capsys):
    results = tmp_path / "RESULTS.md"
    results.write_text("# RESULTS\n\n## Results\n\n| model | set | metric | score |\n|---|---|---|---|\n"
                       "| exp/x | test | WER (%) | 12.34 |\n\n## How to reproduce each row\n")
    exported = export_model(tiny_model_dir, tmp_path / "export", copy_base=True, results_md=results)
    config = json.loads((exported / "config.json").read_text())
    assert config["speech_encoder"] == "base/speech_encoder" and config["llm"] == "base/llm"
    assert (exported / "model.safetensors").read_bytes() == (tiny_model_dir / "model.safetensors").read_bytes()
    card = (exported / "README.md").read_text()
    assert "| exp/x | test | WER (%) | 12.34 |" in card and "How to reproduce" not in card
    info = json.loads((exported / "export_info.json").read_text())
    assert info["copy_base"] is True and info["source_model_dir"] == str(tiny_model_dir.resolve())
    # relocatable: move it away from the base models it was copied from
    moved = shutil.move(str(exported), str(tmp_path / "elsewhere" / "blspkd-tiny"))
    kw = {"dump_dir": str(decode_dump_dir), "max_new_tokens": 6, "batch_size": 4}
    run(DecodeConfig(model_dir=str(tiny_model_dir), out_dir=str(tmp_path / "orig"), **kw), model=model)
    run(DecodeConfig(model_dir=moved, out_dir=str(tmp_path / "exp"), **kw))
    assert (tmp_path / "exp/hyp.txt").read_bytes() == (tmp_path / "orig/hyp.txt").read_bytes()
    # infer gives the same text from the export and from an experiment dir (final model in exp/model)
    exp_dir = tmp_path / "exp_dir"
    shutil.copytree(tiny_model_dir, exp_dir / "model")
    outs = []
    for model_path in (moved, exp_dir):
        assert infer.main(["--model", str(model_path), "--audio", str(wav_22k), "--max_new_tokens", "6"]) == 0
        outs.append(capsys.readouterr().out)
    assert outs[0] == outs[1]


def test_export_without_base_copies(tiny_model_dir, tiny_whisper_dir, tmp_path):
    exported = export_model(tiny_model_dir, tmp_path / "small", copy_base=False)
    config = json.loads((exported / "config.json").read_text())
    assert config["speech_encoder"] == str(tiny_whisper_dir.resolve())
    assert not (exported / "base").exists()
    assert "No RESULTS.md was given" in (exported / "README.md").read_text()
    with pytest.raises(ExportError, match="must not be the model directory"):
        export_model(tiny_model_dir, tiny_model_dir / "export")
    broken = tmp_path / "broken"
    shutil.copytree(tiny_model_dir, broken)
    cfg = json.loads((broken / "config.json").read_text())
    cfg["llm"] = "downloads/no-such-llm"
    (broken / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ExportError, match=r"config.json names the base model 'downloads/no-such-llm', which is not a "
                                          r"directory here"):
        export_model(broken, tmp_path / "never")
