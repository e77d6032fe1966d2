"""Frozen-encoder output cache (blspkd/data/encoder_cache.py): written by stage 2, read by training instead of the
encoder; the same losses as the encoder run within fp16 tolerance; a cache of another encoder is an error naming
both."""
from __future__ import annotations

import json
import logging
import shutil

import numpy as np
import pytest
import torch
from fixtures.tiny_models import make_tiny_blspkd_config
from test_train import tiny_cfg

from blspkd.data.collate import BlspKdCollator
from blspkd.data.encoder_cache import dump_encoder_outputs, encoder_record, load_encoder_outputs
from blspkd.data.feats_io import Fp16Matrices, write_fp16_matrices
from blspkd.models import BlspKdModel
from blspkd.models.speech_encoder import WhisperSpeechEncoder
from blspkd.train.config import TaskConfig
from blspkd.train.dataset import TrainingData
from blspkd.train.trainer import run


@pytest.fixture(scope="module")
def cached_dumps(tiny_whisper_dir, train_dump_dirs, tmp_path_factory):
    root = tmp_path_factory.mktemp("encoder_cache")
    dumps = {name: shutil.copytree(path, root / name) for name, path in train_dump_dirs.items()}
    for path in dumps.values():
        dump_encoder_outputs(path, str(tiny_whisper_dir), batch_frames=400)
    return dumps


def test_fp16_matrices_round_trip_and_range_check(tmp_path):
    mats = {"a": np.random.default_rng(0).normal(size=(7, 5)), "b": np.arange(6.0).reshape(2, 3)}
    rows = write_fp16_matrices(tmp_path / "m.f16", tmp_path / "m.scp", mats.items())
    assert rows == {"a": 7, "b": 2} and (tmp_path / "m.f16").stat().st_size == (35 + 6) * 2
    read = Fp16Matrices(tmp_path / "m.scp")
    assert sorted(read) == ["a", "b"] and read["a"].dtype == np.float32
    np.testing.assert_array_equal(read["b"], mats["b"])
    np.testing.assert_allclose(read["a"], mats["a"], rtol=1e-3, atol=1e-4)
    with pytest.raises(ValueError, match="matrix for 'big' has values outside the float16 range"):
        write_fp16_matrices(tmp_path / "x.f16", tmp_path / "x.scp", [("big", np.full((1, 2), 1e6))])


def test_dump_holds_the_encoder_outputs_and_is_skipped_when_complete(tiny_whisper_dir, cached_dumps, caplog):
    path = cached_dumps["valid"]
    info = json.loads((path / "encoder_out.json").read_text())
    encoder = WhisperSpeechEncoder(str(tiny_whisper_dir)).eval()
    assert info == {**encoder_record(encoder, str(tiny_whisper_dir)), "dim": 32, "dtype": "float16", "num_utts": 4}
    data = TrainingData([path], [TaskConfig()])
    cached = load_encoder_outputs(path, encoder_record(encoder, str(tiny_whisper_dir)))
    for key in data.dirs[0].text:
        feats = torch.from_numpy(np.asarray(data.dirs[0].feats[key])).unsqueeze(0)
        hidden, mask = encoder(feats, torch.tensor([feats.shape[1]]))
        assert cached[key].shape == (int(mask.sum()), 32) == ((feats.shape[1] + 1) // 2, 32)
        np.testing.assert_allclose(cached[key], hidden[0].detach().numpy(), rtol=2e-3, atol=2e-3)
    with caplog.at_level(logging.INFO):
        dump_encoder_outputs(path, str(tiny_whisper_dir))
    assert "already complete; skipping" in caplog.text


def test_cached_outputs_give_the_losses_of_the_encoder_run(tiny_whisper_dir, tiny_llm_dir, cached_dumps):
    torch.manual_seed(0)
    model = BlspKdModel(make_tiny_blspkd_config(tiny_whisper_dir, tiny_llm_dir, plora={"r": 4},
                                                losses={"input_kl": 1.0, "response_ce": 0.5, "cif": 1.0,
                                                        "cif_ce": 0.2})).eval()
    tasks = [TaskConfig(kind="transcription")]
    record = encoder_record(model.speech_encoder, str(tiny_whisper_dir))
    plain = TrainingData([cached_dumps["train"]], tasks)
    cached = TrainingData([cached_dumps["train"]], tasks, encoder=record)
    ids = plain.all_examples()[:6]
    collate = BlspKdCollator(model.tokenizer, model.config)
    a = collate([plain[x] for x in ids])
    b = collate([cached[x] for x in ids])
    assert "encoder_out" in b and "feats" not in b
    out_a, out_b = model(**a), model(**b)
    for name in ("input_kl", "response_ce", "cif", "cif_ce", "loss"):
        assert out_b[name].item() == pytest.approx(out_a[name].item(), rel=5e-3), name
    assert out_b["stats"]["pad_frames"] == pytest.approx(out_a["stats"]["pad_frames"], abs=0.05)
    texts = model.generate(None, None, encoder_out=b["encoder_out"], encoder_out_lengths=b["encoder_out_lengths"],
                           max_new_tokens=4)
    assert texts == model.generate(a["feats"], a["feats_lengths"], max_new_tokens=4)


def test_a_cache_of_another_encoder_is_an_error_naming_both(tiny_whisper_dir, tiny_llm_dir, cached_dumps,
                                                            train_dump_dirs, tmp_path):
    encoder = WhisperSpeechEncoder(str(tiny_whisper_dir))
    with torch.no_grad():
        encoder.encoder.layers[0].fc1.weight.add_(1e-3)  # fine-tuned weights: same config, other outputs
    other = encoder_record(encoder, "exp/other_whisper")
    written = json.loads((cached_dumps["train"] / "encoder_out.json").read_text())
    message = (f"the cached encoder outputs were written by {tiny_whisper_dir} (sha256 {written['sha256'][:12]}, "
               f"pad_to_30s False), but this model's speech encoder is exp/other_whisper (sha256 "
               f"{other['sha256'][:12]}, pad_to_30s False)")
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        TrainingData([cached_dumps["train"]], [TaskConfig()], encoder=other)
    # through the trainer: the same encoder with pad_to_30s changes its outputs, so the cache is refused too
    cfg = tiny_cfg(tiny_whisper_dir, tiny_llm_dir, cached_dumps, tmp_path / "exp", "pretrain.yaml",
                   "--data.encoder_cache", "true", "--model.pad_to_30s", "true", "--max_steps", "1")
    with pytest.raises(ValueError, match=r"pad_to_30s False\), but this model's speech encoder is .* pad_to_30s True"):
        run(cfg)
    with pytest.raises(FileNotFoundError, match="encoder_out.json is missing: data.encoder_cache: true reads"):
        TrainingData([train_dump_dirs["valid"]], [TaskConfig()], encoder=other)  # a dump without the cache


def test_training_reads_the_cache_and_logs_padding(tiny_whisper_dir, tiny_llm_dir, cached_dumps, tmp_path, caplog):
    cfg = tiny_cfg(tiny_whisper_dir, tiny_llm_dir, cached_dumps, tmp_path / "exp", "pretrain.yaml",
                   "--data.encoder_cache", "true", "--max_steps", "3")
    with caplog.at_level(logging.INFO):
        run(cfg)
    assert (tmp_path / "exp" / ".completed").is_file()
    assert "padding frames " in caplog.text and "padding LLM tokens " in caplog.text
    assert "sample spk0-utt000 | instruction: - | reference: the quick brown fox" in caplog.text
