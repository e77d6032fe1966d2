"""The mini recipe's measurement tools (egs/mini_espeak/local/{evaluate,text_ceiling,plot_learning_curve}.py) and its
warm-start config, on tiny random models."""
from __future__ import annotations

import importlib.util
import json
import logging
import re
import sys
from pathlib import Path

import pytest
import torch

from blspkd.models.configuration_blspkd import LossWeights

REPO = Path(__file__).resolve().parents[1]
LOCAL = REPO / "egs/mini_espeak/local"


def load_local(name: str):
    spec = importlib.util.spec_from_file_location(f"mini_local_{name}", LOCAL / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_warmstart_config_trains_the_adapter_without_the_llm_and_matches_the_kd_adapter():
    from blspkd.models import BlspKdConfig
    from blspkd.train.config import TrainConfig
    from blspkd.utils.config import from_yaml_file

    conf = REPO / "egs/mini_espeak/conf"
    warm = from_yaml_file(TrainConfig, conf / "warmstart.yaml")
    kd = from_yaml_file(TrainConfig, conf / "pretrain.yaml")
    assert isinstance(warm.model, BlspKdConfig)  # checked strictly by the parser
    assert set(warm.model.losses.enabled()) == {"cif_ce", "cif"}  # no LLM pass: the point of the warm start
    assert warm.model.adapter == kd.model.adapter  # KD loads the warm-start weights (init_from)
    for key in ("system_prompt", "cif_ce_temperature"):
        assert getattr(warm.model, key) == getattr(kd.model, key), key


def test_listening_metrics_do_not_depend_on_batching_and_match_a_direct_computation(tiny_model_dir, decode_dump_dir):
    from blspkd.data.collate import BlspKdCollator
    from blspkd.decode import load_model
    from blspkd.train.config import TaskConfig
    from blspkd.train.dataset import TrainingData

    evaluate = load_local("evaluate")
    model = load_model(tiny_model_dir, "cpu")
    own = (model.config.losses.enabled(), model.config.temperature)
    small = evaluate.listening_metrics(model, str(decode_dump_dir), batch_size=2, temperature=2.0)
    whole = evaluate.listening_metrics(model, str(decode_dump_dir), batch_size=100, temperature=2.0)
    assert small["num_utts"] == whole["num_utts"] == 7
    for key in ("input_kl", "agreement", "cif_exact", "cif_within1", "cif_rel_err", "emb_cos", "emb_nearest_acc"):
        assert small[key] == pytest.approx(whole[key], abs=1e-4), key
    assert (model.config.losses.enabled(), model.config.temperature) == own  # restored after measuring

    # reference: every utterance in one batch through the model's forward, and the CIF counts by hand
    data = TrainingData([decode_dump_dir], [TaskConfig(kind="plain")], "frames")
    batch = BlspKdCollator(model.tokenizer, model.config)([data[x] for x in data.all_examples()])
    saved = model.config.losses
    model.config.losses = LossWeights(input_kl=1.0)
    with torch.no_grad():
        out = model(**batch)
        speech = model.encode_speech(batch["feats"], batch["feats_lengths"])
    model.config.losses = saved
    assert whole["input_kl"] == pytest.approx(float(out["input_kl"]), rel=1e-4)
    assert whole["agreement"] == pytest.approx(out["stats"]["agreement"], abs=1e-6)
    n_hat = torch.round(speech.alpha_sum).clamp(min=1)
    n = torch.tensor([len(model.framing.transcript_ids(it["text"])) for it in map(data.__getitem__,
                                                                                 data.all_examples())])
    assert whole["cif_exact"] == pytest.approx(float((n_hat == n).float().mean()))
    assert whole["cif_rel_err"] == pytest.approx(float(((n_hat - n).abs() / n).mean()), rel=1e-5)
    assert whole["num_rows"] == int(n.sum())


@pytest.mark.slow
def test_evaluate_cli_reports_every_figure_and_samples(tiny_model_dir, decode_dump_dir, tmp_path, monkeypatch):
    evaluate = load_local("evaluate")
    out = tmp_path / "eval"
    evaluate.main(["--model", str(tiny_model_dir), "--dump_dir", str(decode_dump_dir), "--out_dir", str(out),
                   "--decode_config", "", "--num_samples", "3"])
    metrics = json.loads((out / "metrics.json").read_text())
    for key in ("input_kl", "agreement", "cif_exact", "emb_cos", "wer"):
        assert key in metrics
    assert metrics["wer"] >= 0.0
    hyps = (out / "decode_transcription" / "hyp.txt").read_text().splitlines()
    assert len(hyps) == 7
    report = (out / "report.md").read_text()
    assert report.count("ref: ") == 3 and report.count("hyp: ") == 3


def test_evaluate_needs_exactly_one_model_source(tmp_path, capsys):
    evaluate = load_local("evaluate")
    with pytest.raises(SystemExit):
        evaluate.main(["--dump_dir", str(tmp_path), "--out_dir", str(tmp_path / "o")])
    assert "exactly one of --model and --untrained_config" in capsys.readouterr().err


def test_text_ceiling_candidates_file(tmp_path):
    ceiling = load_local("text_ceiling")
    f = tmp_path / "prompts.txt"
    f.write_text("Repeat this.\n\n ||| You repeat text.\nSay it. ||| Be brief.\n")
    assert ceiling.read_candidates(str(f)) == [("Repeat this.", None), (None, "You repeat text."),
                                               ("Say it.", "Be brief.")]
    f.write_text("ok\n |||  \n")
    with pytest.raises(SystemExit, match=r"prompts.txt:2: neither an instruction nor a system prompt"):
        ceiling.read_candidates(str(f))


def test_plot_learning_curve_writes_a_png_and_names_a_run_without_events(tmp_path):
    from torch.utils.tensorboard import SummaryWriter

    plot = load_local("plot_learning_curve")
    for name in ("warmstart", "pretrain"):
        w = SummaryWriter(str(tmp_path / name / "tensorboard"))
        for step in range(1, 6):
            w.add_scalar("train/loss", 5.0 / step, step)
            w.add_scalar("train/agreement", 0.1 * step, step)
            w.add_scalar("train/lr", 1e-3, step)
        w.add_scalar("valid/agreement", 0.4, 5)
        w.close()
    png = tmp_path / "curve.png"
    plot.main(["--exp", str(tmp_path / "warmstart"), str(tmp_path / "pretrain"), "--out", str(png)])
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(SystemExit, match=r"missing/tensorboard: no TensorBoard event files"):
        plot.main(["--exp", str(tmp_path / "missing"), "--out", str(png)])


def _mini_config(name: str) -> dict:
    """A training config of the mini recipe, loaded strictly and resolved to a dict with every key."""
    from blspkd.train.config import TrainConfig
    from blspkd.utils.config import from_yaml_file, to_dict

    return to_dict(from_yaml_file(TrainConfig, REPO / "egs/mini_espeak/conf" / name))


@pytest.mark.parametrize("name,losses", [
    ("pretrain_nokd", {"response_ce": 1.0, "cif": 1.0, "cif_ce": 0.2}),
    ("pretrain_kd_ce", {"input_kl": 1.0, "response_ce": 1.0, "cif": 1.0, "cif_ce": 0.2}),
])
def test_the_stage4_ablations_change_only_the_loss(name, losses):
    """conf/ablation/pretrain_nokd.yaml (cross-entropy on the transcript instead of input-KD) and pretrain_kd_ce.yaml
    (both) are conf/pretrain.yaml with another loss: same start, data, batches, updates and optimiser (README "KD or
    not"); the transcript CE needs the transcription task, whose answer is the transcript."""
    kd, variant = _mini_config("pretrain.yaml"), _mini_config(f"ablation/{name}.yaml")
    def enabled(losses: dict) -> dict:
        return {k: v for k, v in losses.items() if v is not None}

    assert enabled(kd["model"].pop("losses")) == {"input_kl": 1.0, "cif": 1.0, "cif_ce": 0.2}
    assert enabled(variant["model"].pop("losses")) == losses
    assert [t["kind"] for t in kd["data"].pop("tasks")] == ["plain"]
    assert [t["kind"] for t in variant["data"].pop("tasks")] == ["transcription"]
    for cfg in (kd, variant):
        cfg["model"].pop("temperature")  # the no-KD config leaves the KL temperature at its default
    assert kd == variant


def test_the_finetune_without_kl_drops_only_input_kl():
    """conf/ablation/finetune_nokl.yaml is conf/finetune.yaml without input_kl (README "input-KD in fine-tuning")."""
    base, nokl = _mini_config("finetune.yaml"), _mini_config("ablation/finetune_nokl.yaml")
    base_losses, nokl_losses = base["model"].pop("losses"), nokl["model"].pop("losses")
    assert base_losses["input_kl"] == 1.0
    assert {k: v for k, v in nokl_losses.items() if v != base_losses[k]} == {"input_kl": None}
    assert base == nokl


@pytest.mark.real_models
@pytest.mark.slow
@pytest.mark.skipif(not Path("/usr/share/pocketsphinx/test/data/librivox/transcription").is_file(),
                    reason="Debian package pocketsphinx-testdata missing")
def test_whisper_reference_transcribes_a_data_dir_and_counts_audio_cut_to_the_window(real_models, tmp_path, caplog):
    import jiwer
    import numpy as np
    import soundfile as sf

    from blspkd.data.kaldi_dir import read_kv, write_data_dir

    librivox = Path("/usr/share/pocketsphinx/test/data/librivox")
    refs = {}  # "<s> text </s> (uttid)" lines
    for line in (librivox / "transcription").read_text().splitlines()[:3]:
        text, key = re.fullmatch(r"<s> (.*) </s> \((\S+)\)", line.strip()).groups()
        refs[key] = text
    wav = {k: str(librivox / f"{k}.wav") for k in refs}
    first = sf.read(wav[next(iter(refs))], dtype="float32")[0]
    sf.write(tmp_path / "long.wav", np.concatenate([first, np.zeros(31 * 16000, np.float32)]), 16000)
    wav["zz-long"], refs["zz-long"] = str(tmp_path / "long.wav"), "unscored"
    data = write_data_dir(tmp_path / "data", {k: "spk" for k in wav}, **{"wav.scp": wav}, text=refs)
    with caplog.at_level(logging.INFO, logger="whisper_reference"):
        load_local("whisper_reference").main(["--whisper", str(real_models.whisper_dir), "--data_dir", str(data),
                                              "--out_dir", str(tmp_path / "out"), "--batch_size", "2"])
    hyps = read_kv(tmp_path / "out" / "hyp.txt")
    assert sorted(hyps) == sorted(wav)
    assert "4 utterances transcribed; 1 longer than 30 s were cut to it" in caplog.text
    keys = [k for k in refs if k != "zz-long"]
    assert jiwer.wer([refs[k].lower() for k in keys], [hyps[k].lower().strip(".") for k in keys]) < 0.2
    assert hyps["zz-long"].lower().split()[:3] == hyps[keys[0]].lower().split()[:3]  # the audio in the window


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))
