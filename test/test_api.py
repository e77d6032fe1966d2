"""The Python API (``blspkd.SpeechLLM``) and the AutoConfig registration, on the tiny random model."""
from __future__ import annotations

import contextlib
import io
import json
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf
import torch
from fixtures.audio import synth_speech

from blspkd.bin import infer
from blspkd.data.audio import AudioError, read_audio
from blspkd.data.mel import WhisperLogMel
from blspkd.utils.config import ConfigError

TRANSCRIBE = "Repeat the following sentence exactly."


@pytest.fixture(scope="module")
def wav(tmp_path_factory):
    return synth_speech(tmp_path_factory.mktemp("api") / "shells.wav", "she sells sea shells by the sea shore",
                        rate=22050)


@pytest.fixture(scope="module")
def llm(tiny_model_dir):
    from blspkd import SpeechLLM

    return SpeechLLM.from_pretrained(tiny_model_dir, device="cpu")


def test_generate_is_what_infer_prints(llm, tiny_model_dir, wav):
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert infer.main(["--model", str(tiny_model_dir), "--audio", str(wav), "--max_new_tokens", "12"]) == 0
    text = llm.generate(str(wav), instruction=TRANSCRIBE, max_new_tokens=12)
    assert text and out.getvalue() == text + "\n"
    # the task's instruction is the default; the same audio as bytes or as a 16 kHz waveform gives the same text
    assert llm.generate(wav, max_new_tokens=12) == text
    assert llm.generate(wav.read_bytes(), task="transcription", max_new_tokens=12) == text
    assert llm.generate(read_audio(wav, 16000), instruction=TRANSCRIBE, max_new_tokens=12) == text


def test_stream_joins_to_generate(llm, wav):
    for instruction in (TRANSCRIBE, None):
        expected = llm.answer([wav], [instruction], max_new_tokens=20)[0]
        stream = llm.stream(wav, instruction=instruction, max_new_tokens=20) if instruction else \
            llm.stream(wav, task="answer", max_new_tokens=20)
        pieces = list(stream)
        assert len(pieces) > 1 and "".join(pieces) == expected.text
        assert stream.answer.text == expected.text
        assert stream.answer.completion_tokens == expected.completion_tokens


def test_answer_counts_match_the_model(llm, tiny_model_dir, wav):
    """CIF's speech-token count and the generated-token count against BlspKdModel.generate on the same features."""
    wave = read_audio(wav, 16000)
    feats = torch.from_numpy(WhisperLogMel.from_pretrained(tiny_model_dir)(wave))[None]
    ref = llm.model.generate(feats, torch.tensor([feats.shape[1]]), [TRANSCRIBE], return_details=True,
                             max_new_tokens=7)
    answer = llm.answer([wav], [TRANSCRIBE], max_new_tokens=7)[0]
    assert answer.text == ref["texts"][0]
    assert answer.num_speech_tokens == ref["num_speech_tokens"][0] >= 1
    assert answer.completion_tokens == ref["num_generated_tokens"][0]
    assert answer.audio_seconds == pytest.approx(sf.info(wav).duration, abs=1e-3)
    framing = llm.model.framing
    assert answer.prompt_tokens == len(framing.prefix_ids(TRANSCRIBE)) + answer.num_speech_tokens + \
        len(framing.suffix_ids)
    assert answer.finish_reason == ("length" if answer.completion_tokens == 7 else "stop")
    assert answer.real_time_factor == pytest.approx(answer.seconds / answer.audio_seconds)


def test_bad_input_errors(llm, tmp_path):
    with pytest.raises(AudioError, match=r"^the waveform lasts 31.0 s, longer than the 30 s the Whisper encoder "
                                         r"takes; split it"):
        llm.generate(np.zeros(16000 * 31, dtype=np.float32))
    with pytest.raises(AudioError, match=r"^cannot decode the audio: neither soundfile nor ffmpeg recognises it as "
                                         r"audio \(17 bytes; soundfile: "):
        llm.generate(b"this is not audio")
    with pytest.raises(AudioError, match=r"^the waveform is too short: 100 samples at 16000 Hz, at least 201 are "
                                         r"needed$"):
        llm.generate(np.zeros(100, dtype=np.float32))
    with pytest.raises(ConfigError, match="stream: transformers streams greedy search and sampling only"):
        llm.stream(np.zeros(16000, dtype=np.float32), num_beams=2)
    with pytest.raises(ConfigError, match="unknown task 'summarise'; choose one of transcription, translation, "):
        llm.generate(np.zeros(16000, dtype=np.float32), task="summarise")
    with pytest.raises(ConfigError, match=r"task 'translation': its instruction names \{language\}"):
        llm.generate(np.zeros(16000, dtype=np.float32), task="translation")


@pytest.mark.parametrize("order", ["blspkd first", "transformers first"])
def test_autoconfig_reads_an_export_without_remote_code(tiny_model_dir, order):
    """In a fresh interpreter: ``import blspkd`` stays light (no transformers) and AutoConfig then knows "blspkd"."""
    lines = ["import sys", "import blspkd", "assert 'transformers' not in sys.modules, 'import blspkd is heavy'",
             "from transformers import AutoConfig"]
    if order == "transformers first":
        lines = ["from transformers import AutoConfig", "import blspkd"]
    code = "\n".join(lines + [
        f"c = AutoConfig.from_pretrained({str(tiny_model_dir)!r}, trust_remote_code=False)",
        "from blspkd.models import BlspKdConfig",
        "assert type(c) is BlspKdConfig, type(c)",
        "print(c.model_type, c.speech_encoder)"])
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    saved = json.loads((tiny_model_dir / "config.json").read_text())
    assert proc.stdout == f"blspkd {saved['speech_encoder']}\n"
