"""Variable-length Whisper encoder: equals transformers' encoder on 30-s input, batch invariance, 30-s padding."""
import numpy as np
import pytest
import torch
from transformers import WhisperFeatureExtractor, WhisperModel

from blspkd.models.speech_encoder import WhisperSpeechEncoder, whisper_pad_value


@pytest.fixture(scope="module")
def hf_encoder(tiny_whisper_dir):
    return WhisperModel.from_pretrained(tiny_whisper_dir).get_encoder().eval()


def test_full_length_equals_transformers_encoder(tiny_whisper_dir, hf_encoder):
    enc = WhisperSpeechEncoder(str(tiny_whisper_dir)).eval()
    feats = torch.randn(2, 3000, 80)
    out, mask = enc(feats, torch.tensor([3000, 3000]))
    ref = hf_encoder(feats.transpose(1, 2)).last_hidden_state
    assert out.shape == (2, 1500, 32) and mask.all()
    torch.testing.assert_close(out, ref, atol=1e-4, rtol=1e-4)


def test_batch_invariance_and_lengths(tiny_whisper_dir):
    enc = WhisperSpeechEncoder(str(tiny_whisper_dir)).eval()
    lengths = torch.tensor([101, 64, 7])
    feats = torch.randn(3, 101, 80)
    feats[1, 64:] = 5.0  # garbage in the padding must not leak into the shorter utterances
    feats[2, 7:] = -3.0
    out, mask = enc(feats, lengths)
    assert out.shape == (3, 51, 32)
    assert mask.sum(1).tolist() == [51, 32, 4]
    assert torch.all(out[~mask] == 0)
    for b in range(3):
        single, _ = enc(feats[b:b + 1, : lengths[b]], lengths[b:b + 1])
        torch.testing.assert_close(out[b, : single.shape[1]], single[0], atol=1e-5, rtol=1e-5)


def test_pad_value_matches_feature_extractor_on_zero_padded_audio():
    fe = WhisperFeatureExtractor(feature_size=80)
    audio = np.random.default_rng(0).standard_normal(16000).astype(np.float32) * 0.1
    padded = fe(audio, sampling_rate=16000, return_tensors="pt").input_features[0].T  # (3000, 80), 30-s padded
    unpadded = torch.from_numpy(fe._np_extract_fbank_features(audio[None], "cpu")[0].T[:-1].copy())
    value = whisper_pad_value(unpadded[None], torch.tensor([unpadded.shape[0]]))
    torch.testing.assert_close(padded[200:], torch.full_like(padded[200:], float(value)), atol=1e-5, rtol=0)


def test_pad_to_30s_is_the_reference_run_cut_to_length(tiny_whisper_dir, hf_encoder):
    enc = WhisperSpeechEncoder(str(tiny_whisper_dir), pad_to_30s=True).eval()
    feats = torch.randn(2, 90, 80)
    lengths = torch.tensor([90, 41])
    out, mask = enc(feats, lengths)
    assert out.shape == (2, 45, 32) and mask.sum(1).tolist() == [45, 21]
    for b in range(2):
        full = torch.full((3000, 80), float(whisper_pad_value(feats[b:b + 1], lengths[b:b + 1])))
        full[: lengths[b]] = feats[b, : lengths[b]]
        ref = hf_encoder(full.T[None]).last_hidden_state[0, : int(mask[b].sum())]
        torch.testing.assert_close(out[b, : ref.shape[0]], ref, atol=1e-4, rtol=1e-4)
    real, _ = WhisperSpeechEncoder(str(tiny_whisper_dir)).eval()(feats, lengths)
    assert not torch.allclose(real, out, atol=1e-3)  # the two modes really differ (attention saw the padding)


def test_frozen_by_default_and_unfreezable(tiny_whisper_dir):
    feats, lengths = torch.randn(1, 30, 80, requires_grad=True), torch.tensor([30])
    frozen = WhisperSpeechEncoder(str(tiny_whisper_dir)).train()
    assert not any(p.requires_grad for p in frozen.parameters())
    assert not frozen.encoder.training  # a frozen encoder runs without dropout
    assert not frozen(feats, lengths)[0].requires_grad
    trainable = WhisperSpeechEncoder(str(tiny_whisper_dir), freeze=False).train()
    trainable(feats, lengths)[0].sum().backward()
    assert trainable.encoder.conv1.weight.grad is not None
    assert trainable.encoder.embed_positions.weight.grad is None


def test_too_long_input_is_a_clear_error(tiny_whisper_dir):
    enc = WhisperSpeechEncoder(str(tiny_whisper_dir))
    with pytest.raises(ValueError, match="more than the 3000 .30 s."):
        enc(torch.zeros(1, 3001, 80), torch.tensor([3001]))
