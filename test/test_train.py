"""Training infrastructure: sampler, schedule, checkpoints, dataset tasks, config errors, and the trainer on the real
BlspKdModel built from tiny random models (resume exactness, NaN guard, logs, TensorBoard, stage-5 init)."""
from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from blspkd.train.checkpoint import checkpoint_dirs, latest_checkpoint, load_checkpoint, save_checkpoint
from blspkd.train.checks import check_train_config
from blspkd.train.config import TaskConfig, TrainConfig
from blspkd.train.dataset import TrainingData
from blspkd.train.sampler import BucketBatchSampler
from blspkd.train.trainer import lr_lambda, resolve_precision, run
from blspkd.utils.config import ConfigError, flat_keys, parse_config

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "egs/mini_espeak/conf/tiny"


def tiny_args(whisper, llm, dumps, exp, conf="pretrain.yaml", *extra) -> list[str]:
    return ["--config", str(TINY / conf), "--exp_dir", str(exp), "--data.train", f"[{{path: {dumps['train']}}}]",
            "--data.valid", f"[{dumps['valid']}]", "--model.speech_encoder", str(whisper), "--model.llm", str(llm),
            *extra]


def tiny_cfg(whisper, llm, dumps, exp, conf="pretrain.yaml", *extra) -> TrainConfig:
    return parse_config(TrainConfig, tiny_args(whisper, llm, dumps, exp, conf, *extra))


# ---------------------------------------------------------------------------------------------------- sampler
def make_sampler(rank=0, world=1, weight=1.0, seed=3, bins=100):
    lengths = [{f"u{i:02d}": 5 + (i * 7) % 23 for i in range(30)}]
    eligible = [{k: [0, 1] for k in lengths[0]}]
    return BucketBatchSampler(lengths, [weight], eligible, [1.0, 3.0], bins, 6, seed, rank, world)


def test_sampler_is_deterministic_bucketed_and_bounded():
    s = make_sampler()
    a, b = s.epoch_batches(0), make_sampler().epoch_batches(0)
    assert a == b
    assert a != s.epoch_batches(1)
    flat = [x for batch in a for x in batch]
    assert sorted(k for _, k, _ in flat) == sorted(s.lengths[0])  # weight 1: every utterance exactly once
    for batch in a:
        lens = [s.lengths[0][k] for _, k, _ in batch]
        assert len(batch) * max(lens) <= 100 and len(batch) <= 6
    # task weights 1:3 -> about three quarters of the examples get task 1 over many epochs
    tasks = [t for e in range(20) for batch in s.epoch_batches(e) for _, _, t in batch]
    assert 0.65 < np.mean(tasks) < 0.85


def test_sampler_dir_weights_repeat_and_subsample():
    twice = [x for b in make_sampler(weight=2.0).epoch_batches(0) for x in b]
    assert len(twice) == 60 and len({k for _, k, _ in twice}) == 30
    half = [x for b in make_sampler(weight=0.5).epoch_batches(0) for x in b]
    assert len(half) == 15
    other = {k for b in make_sampler(weight=0.5).epoch_batches(1) for _, k, _ in b}
    assert other != {k for _, k, _ in half}  # a different half each epoch


def test_sampler_shards_over_ranks_and_resumes_mid_epoch():
    ranks = [make_sampler(rank=r, world=2) for r in (0, 1)]
    mine = [list(s) for s in ranks]
    assert len(mine[0]) == len(mine[1]) > 0
    keys0 = {k for b in mine[0] for _, k, _ in b}
    keys1 = {k for b in mine[1] for _, k, _ in b}
    assert not keys0 & keys1  # different data on each rank
    s = make_sampler(rank=1, world=2)
    s.set_epoch(0, start_batch=2)
    assert list(s) == mine[1][2:]


# ------------------------------------------------------------------------------------------ schedule, precision
def test_lr_schedule_warmup_then_linear_decay():
    f = lr_lambda(warmup=4, total=12)
    assert [f(s) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert f(4) == 1.0 and f(8) == 0.5 and f(12) == 0.0


def test_fp16_is_refused_with_a_clear_message():
    with pytest.raises(ConfigError, match="precision: fp16 is not supported .* use precision: bf16"):
        resolve_precision("fp16", torch.device("cpu"))
    assert resolve_precision("auto", torch.device("cpu")) is None


# ---------------------------------------------------------------------------------------------------- checkpoints
def test_checkpoints_atomic_keep_last_k_and_weights_only(tmp_path):
    for step in (1, 2, 3):
        save_checkpoint(tmp_path, step, {"w": torch.full((2,), float(step))}, {"step": step, "x": torch.ones(1)}, 2)
    (tmp_path / "checkpoints" / "step_00000009.tmp").mkdir()  # a save killed half-way is never picked up
    assert [p.name for p in checkpoint_dirs(tmp_path)] == ["step_00000002", "step_00000003"]
    weights, state = load_checkpoint(latest_checkpoint(tmp_path))
    assert torch.equal(weights["w"], torch.tensor([3.0, 3.0])) and state["step"] == 3
    (latest_checkpoint(tmp_path) / "state.pt").write_bytes(b"garbage")
    with pytest.raises(RuntimeError, match="cannot read checkpoint .*step_00000003 .*delete that directory"):
        load_checkpoint(latest_checkpoint(tmp_path))


# ---------------------------------------------------------------------------------------------------- dataset
def test_dataset_tasks_instructions_responses_and_logged_skips(train_dump_dirs, caplog):
    tasks = [TaskConfig(kind="continuation"), TaskConfig(kind="transcription", instruction="Say it again.")]
    with caplog.at_level(logging.INFO):
        only_cont = TrainingData([train_dump_dirs["train"]], tasks[:1])
    assert "skipped 2 of 16 utterances: 2 x no file for any task (continuation)" in caplog.text
    assert len(only_cont.eligible[0]) == 14
    data = TrainingData([train_dump_dirs["train"]], tasks)
    key = "spk0-utt000"  # no continuation: only transcription is possible
    assert data.eligible[0][key] == [1]
    item = data[(0, key, 1)]
    assert item["instruction"] == "Say it again." and item["response"] == item["text"]
    assert item["feats"].dtype == np.float32 and item["feats"].shape[1] == 80
    cont = data[(0, "spk2-utt002", 0)]
    assert cont["instruction"] == "Continue the following text in a coherent style: "
    assert cont["response"] == "and then the story went on"
    with pytest.raises(ConfigError, match="set the task's 'language' key"):
        TrainingData([train_dump_dirs["train"]], [TaskConfig(kind="translation")])


def test_dataset_and_collate_leave_the_end_of_turn_off_truncated_responses(tiny_llm_dir, tmp_path):
    """A teacher continuation cut at max_new_tokens is no finished turn: the model must not learn to stop there."""
    from types import SimpleNamespace

    from fixtures.train import SENTENCES, make_dump_dir
    from transformers import AutoTokenizer

    from blspkd.data.collate import BlspKdCollator
    from blspkd.data.kaldi_dir import write_kv
    from blspkd.data.prompts import ChatFraming

    keys = [f"spk{i % 3}-utt{i:03d}" for i in range(3)]
    cont = {k: f"and the story went on {i}" for i, k in enumerate(keys)}
    dump = make_dump_dir(tmp_path / "d", SENTENCES[:3], seed=0, continuations=cont)
    write_kv(dump / "continuation.truncated", {keys[0]: "true", keys[1]: "false", keys[2]: "false"})
    data = TrainingData([dump], [TaskConfig(kind="continuation")])
    items = [data[(0, k, 0)] for k in keys]
    assert [it.get("response_truncated", False) for it in items] == [True, False, False]
    tok = AutoTokenizer.from_pretrained(tiny_llm_dir)
    config = SimpleNamespace(system_prompt=None, instruction_separator="\n", default_instruction="Repeat.")
    batch = BlspKdCollator(tok, config)(items)
    framing = ChatFraming(tok)
    for i, k in enumerate(keys):
        response = batch["input_ids"][i][batch["response_mask"][i]].tolist()
        body = tok(cont[k], add_special_tokens=False)["input_ids"]
        assert response == (body if i == 0 else body + framing.end_of_turn_ids), k


def test_dataset_names_a_missing_dump_file(tmp_path):
    (tmp_path / "d").mkdir()
    with pytest.raises(FileNotFoundError, match=r"d/feats.scp is missing: .* \(run stage 2 of the recipe\)"):
        TrainingData([tmp_path / "d"], [TaskConfig()])


# ---------------------------------------------------------------------------------------------------- CLI
def run_cli(*args, **kw):
    return subprocess.run([sys.executable, "-m", "blspkd.bin.train", *args], capture_output=True, text=True,
                          cwd=REPO, **kw)


def test_yaml_typo_is_an_error_naming_the_key(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text((TINY / "pretrain.yaml").read_text().replace("batch_bins:", "batch_binz:"))
    r = run_cli("--config", str(bad))
    assert r.returncode == 2
    assert f"{bad}: unknown key 'data.batch_binz' (did you mean 'data.batch_bins'?)" in r.stderr
    assert "Traceback" not in r.stderr


def test_print_config_prints_every_key():
    import yaml

    r = run_cli("--config", str(TINY / "pretrain.yaml"), "--model.temperature", "1.5", "--model.adapter.num_heads",
                "2", "--print_config")
    assert r.returncode == 0, r.stderr
    printed = yaml.safe_load(r.stdout)
    flat = set()

    def walk(d, prefix=""):
        for k, v in d.items():
            if isinstance(v, dict):
                walk(v, f"{prefix}{k}.")
            else:
                flat.add(f"{prefix}{k}")

    walk(printed)
    # every key, the model's included; PLoRA is off (null), so its keys are the one key model.plora
    assert flat == {k for k in flat_keys(TrainConfig) if not k.startswith("model.plora.")} | {"model.plora"}
    model = printed["model"]
    assert model["temperature"] == 1.5 and model["plora"] is None
    assert model["losses"] == {"input_kl": 1.0, "response_kl": None, "response_ce": None, "cif": 1.0, "cif_ce": None}
    assert model["adapter"] == {"d_model": None, "num_heads": 2, "ffn_dim": None, "num_pre_cif_layers": 1,
                                "num_post_cif_layers": 1, "pre_cif_dropout": 0.0, "post_cif_dropout": 0.1,
                                "frame_pooling": 1, "threshold": 1.0}
    assert "id2label" not in model and "chunk_size_feed_forward" not in model


@pytest.mark.parametrize("name", ["pretrain.yaml", "finetune.yaml", "tiny/pretrain.yaml", "tiny/finetune.yaml",
                                  "ablation/pretrain_nokd.yaml", "ablation/finetune_nokl.yaml",
                                  "ablation/pretrain_kd_ce.yaml"])
def test_recipe_configs_load_and_their_model_sections_are_valid(name):
    from blspkd.models import BlspKdConfig
    from blspkd.train.dataset import task_instruction
    from blspkd.utils.config import from_yaml_file

    cfg = from_yaml_file(TrainConfig, REPO / "egs/mini_espeak/conf" / name)  # unknown model keys raise
    assert isinstance(cfg.model, BlspKdConfig) and cfg.model.losses.enabled()
    assert all(task_instruction(t) is None or task_instruction(t).strip() for t in cfg.data.tasks)


@pytest.mark.parametrize("key,close", [("model.temprature", "model.temperature"),
                                       ("model.adapter.num_head", "model.adapter.num_heads"),
                                       ("model.losses.input_KL", "model.losses.input_kl"),
                                       ("model.id2labels", None)])  # transformers' own fields are not model keys
def test_unknown_model_key_names_the_closest_real_key(key, close):
    hint = f" \\(did you mean '{close}'\\?\\)" if close else "\\."
    with pytest.raises(ConfigError, match=f"command line: unknown key '{key}'{hint}"):
        parse_config(TrainConfig, ["--config", str(TINY / "pretrain.yaml"), f"--{key}", "1"])


def test_init_from_config_is_the_base_and_model_keys_override_it_strictly(tmp_path):
    import json

    from blspkd.models import BlspKdConfig
    from blspkd.train.trainer import build_model

    saved = tmp_path / "pre_model"
    BlspKdConfig(speech_encoder="enc", llm="lm", adapter={"num_heads": 3, "frame_pooling": 2}, temperature=1.0,
                 losses={"cif_ce": 1.0, "cif": 1.0}, system_prompt="S").save_pretrained(saved)
    base = ["--config", str(TINY / "finetune.yaml"), "--init_from", str(saved)]
    cfg = parse_config(TrainConfig, [*base, "--model.adapter.threshold", "0.9"])
    m = cfg.model
    # kept from the saved model: base paths, adapter sizes, KD temperature; the yaml's system prompt replaces "S"
    assert (m.speech_encoder, m.llm, m.temperature) == ("enc", "lm", 1.0)
    assert m.system_prompt == "You repeat the user's text exactly, word for word."
    assert parse_config(TrainConfig, [*base, "--model.system_prompt", "null"]).model.system_prompt is None
    assert (m.adapter.num_heads, m.adapter.frame_pooling, m.adapter.threshold) == (3, 2, 0.9)
    # the yaml's loss weights replace the saved ones (cif_ce is off), its plora section turns PLoRA on
    assert m.losses.enabled() == {"response_kl": 1.0, "response_ce": 1.0, "cif": 0.1}
    assert (m.plora.r, m.plora.lora_alpha, m.plora.target_modules) == (4, 4, "all-linear")
    with pytest.raises(ConfigError, match="unknown key 'model.adapter.num_head' \\(did you mean 'model.adapter.num_he"):
        parse_config(TrainConfig, [*base, "--model.adapter.num_head", "2"])
    with pytest.raises(ConfigError, match="'model.losses.cif' must be float | None, got 'x'"):
        parse_config(TrainConfig, [*base, "--model.losses.cif", "x"])
    # a model dir that does not exist yet (stage 5's config before stage 4 ran): the config's own model section
    ahead = parse_config(TrainConfig, [*base, "--init_from", str(tmp_path / "later")])
    assert (ahead.model.speech_encoder, ahead.model.adapter.num_heads) == (None, 8)
    with pytest.raises(ConfigError, match="init_from: .*later/config.json not found"):
        build_model(ahead)
    config = json.loads((saved / "config.json").read_text())
    (saved / "config.json").write_text(json.dumps({**config, "adapter": {**config["adapter"], "num_head": 1}}))
    with pytest.raises(ConfigError, match="adapter: unknown key 'num_head' \\(did you mean 'num_heads'"):
        parse_config(TrainConfig, base)


# ---------------------------------------------------------------------------------------------------- the trainer
def final_weights(exp: Path) -> dict[str, torch.Tensor]:
    return load_file(str(exp / "model" / "model.safetensors"))


def test_resume_after_interruption_equals_uninterrupted_run(tiny_whisper_dir, tiny_llm_dir, train_dump_dirs, tmp_path,
                                                            caplog):
    args = (tiny_whisper_dir, tiny_llm_dir, train_dump_dirs)
    with caplog.at_level(logging.INFO):
        run(tiny_cfg(*args, tmp_path / "full"))
    log = caplog.text
    # console progress: loss terms, agreement, lr, throughput, ETA; validation and sample generations
    for needle in ("step 6/6", "input_kl ", "cif ", "agreement ", "lr ", "utt/s", "tokens/s", "ETA ",
                   "validation at step 3", "sample spk0-utt000 | instruction: - | reference: the quick brown fox"):
        assert needle in log, needle
    full = tmp_path / "full"
    assert (full / ".completed").read_text().startswith("step 6\n")
    assert (full / "config.yaml").is_file() and list((full / "tensorboard").glob("events.out.tfevents.*"))
    assert [p.name for p in checkpoint_dirs(full)] == ["step_00000003", "step_00000006"]

    cut = tmp_path / "cut"
    run(tiny_cfg(*args, cut, "pretrain.yaml", "--stop_after_steps", "4"))  # as if killed after update 4
    assert not (cut / ".completed").exists() and latest_checkpoint(cut).name == "step_00000004"
    caplog.clear()
    with caplog.at_level(logging.INFO):
        run(tiny_cfg(*args, cut))  # the same command again resumes
    assert "resumed from" in caplog.text and "step 4, epoch" in caplog.text
    a, b = final_weights(full), final_weights(cut)
    assert a.keys() == b.keys() and len(a) > 10
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-6, msg=k)
    start = tmp_path / "untrained"
    assert max(float((a[k] - final_weights_init(tiny_cfg(*args, start))[k]).abs().max()) for k in a) > 1e-4
    caplog.clear()
    with caplog.at_level(logging.INFO):
        run(tiny_cfg(*args, cut))
    assert "is complete (step 6)" in caplog.text


def test_gradient_checkpointing_trains_the_same_weights(tiny_whisper_dir, tiny_llm_dir, train_dump_dirs, tmp_path):
    """gradient_checkpointing: true (decoder layers recomputed in backward, each with its own PLoRA mask) trains
    exactly the weights of the same run without it."""
    args = (tiny_whisper_dir, tiny_llm_dir, train_dump_dirs)
    common = ("--max_steps", "2", "--data.valid", "[]", "--model.plora", "{r: 4, lora_dropout: 0.1}")
    run(tiny_cfg(*args, tmp_path / "off", "pretrain.yaml", *common))
    run(tiny_cfg(*args, tmp_path / "on", "pretrain.yaml", *common, "--gradient_checkpointing", "true"))
    a, b = final_weights(tmp_path / "off"), final_weights(tmp_path / "on")
    assert a.keys() == b.keys() and any("lora_B" in k for k in a)
    assert any(float(v.abs().max()) > 0 for k, v in a.items() if "lora_B" in k)  # B left 0: the adapters trained
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-5, atol=1e-6, msg=k)


def final_weights_init(cfg: TrainConfig) -> dict[str, torch.Tensor]:
    from blspkd.train.trainer import build_model

    torch.manual_seed(cfg.seed)
    return {k: v.detach() for k, v in build_model(cfg).trainable_state_dict().items()}


def test_nan_guard_skips_the_update(tiny_whisper_dir, tiny_llm_dir, train_dump_dirs, tmp_path, caplog):
    from blspkd.train.trainer import build_model

    def poisoned(cfg):
        # the real model, with NaN coming out of the LLM's input embeddings (as an overflow would) in training
        model = build_model(cfg)
        model.llm.get_input_embeddings().register_forward_hook(
            lambda m, i, o: o * float("nan") if torch.is_grad_enabled() else o
        )
        return model

    cfg = tiny_cfg(tiny_whisper_dir, tiny_llm_dir, train_dump_dirs, tmp_path / "exp", "pretrain.yaml",
                   "--max_steps", "2", "--data.valid", "[]")
    init = final_weights_init(cfg)
    with caplog.at_level(logging.INFO):
        run(cfg, model_builder=poisoned)
    assert "update 1 skipped: non-finite loss or gradient (grad norm nan); 1 update(s) skipped so far" in caplog.text
    assert "update 2 skipped" in caplog.text and "skipped 1" in caplog.text
    assert (tmp_path / "exp" / ".completed").read_text().split("\n")[1] == "skipped_steps 2"
    after = final_weights(tmp_path / "exp")
    for k in init:
        assert torch.equal(init[k], after[k]), k


def test_non_finite_features_are_an_error_naming_file_and_key(tmp_path):
    from fixtures.train import make_dump_dir

    from blspkd.data.feats_io import load_scp, write_feats

    d = make_dump_dir(tmp_path / "nan", ["the quick brown fox", "hello world"], seed=5)
    feats = {k: np.array(v) for k, v in load_scp(d / "feats.scp").items()}
    feats["spk0-utt000"][3, 7] = np.nan
    write_feats(d / "feats.ark", d / "feats.scp", sorted(feats.items()))
    data = TrainingData([d], [TaskConfig()])
    assert data[(0, "spk1-utt001", 0)]["feats"].flags.writeable
    with pytest.raises(ValueError, match=r"nan/feats.scp:1: utterance 'spk0-utt000': 1 of 9200 feature values are "
                                         r"not finite \(NaN/inf\)\. Fix: re-run stage 2 for this dir \(it refuses or "
                                         r"drops audio with non-finite samples\)"):
        data[(0, "spk0-utt000", 0)]


def test_stage5_finetune_from_pretrained_with_plora_and_task_mix(tiny_whisper_dir, tiny_llm_dir, train_dump_dirs,
                                                                 tmp_path, caplog):
    args = (tiny_whisper_dir, tiny_llm_dir, train_dump_dirs)
    run(tiny_cfg(*args, tmp_path / "pre", "pretrain.yaml", "--max_steps", "2"))
    pre = final_weights(tmp_path / "pre")
    with caplog.at_level(logging.INFO):
        run(tiny_cfg(*args, tmp_path / "ft", "finetune.yaml", "--init_from", str(tmp_path / "pre" / "model")))
    assert "init_from" in caplog.text and "newly initialised" in caplog.text
    assert "response_ce " in caplog.text and "response_kl " in caplog.text
    ft = final_weights(tmp_path / "ft")
    assert any("lora" in k for k in ft)  # PLoRA weights are trained and saved
    assert set(pre) <= set(ft)
    assert any(not torch.equal(pre[k], ft[k]) for k in pre)


def test_plora_lr_scales_the_first_update_of_plora_weights_only(tiny_whisper_dir, tiny_llm_dir, train_dump_dirs,
                                                               tmp_path):
    """One AdamW update from the same start moves each weight by about its group's lr (the first step's update is
    lr * g / |g|), so optim.plora_lr = lr / 10 moves lora_B a tenth as far and leaves the adapter's update as it was."""
    args = (tiny_whisper_dir, tiny_llm_dir, train_dump_dirs)
    run(tiny_cfg(*args, tmp_path / "pre", "pretrain.yaml", "--max_steps", "2"))
    start = final_weights(tmp_path / "pre")
    one_update = ["--init_from", str(tmp_path / "pre" / "model"), "--max_steps", "1", "--optim.warmup_steps", "0",
                  "--optim.weight_decay", "0"]
    run(tiny_cfg(*args, tmp_path / "same", "finetune.yaml", *one_update))
    run(tiny_cfg(*args, tmp_path / "low", "finetune.yaml", *one_update, "--optim.plora_lr", "5.0e-5"))
    same, low = final_weights(tmp_path / "same"), final_weights(tmp_path / "low")
    lora_b = [k for k in same if "lora_B" in k]
    # lora_B starts at zero; the last layer's query, output and MLP weights get no gradient (PLoRA acts on speech
    # rows only, and there only the last layer's keys and values reach the answer's logits)
    moved = [k for k in lora_b if same[k].abs().max() > 0]
    assert moved and all(same[k].abs().max() == 0 == low[k].abs().max() for k in set(lora_b) - set(moved))
    for k in moved:
        assert same[k].abs().max().item() == pytest.approx(5.0e-4, rel=1e-2)
        torch.testing.assert_close(low[k], same[k] / 10, rtol=1e-3, atol=1e-9)
    adapter = [k for k in start if "lora_" not in k]
    assert adapter and all(torch.allclose(same[k], low[k], atol=1e-7) for k in adapter)
    assert any(not torch.equal(start[k], same[k]) for k in adapter)


def test_resume_with_plora_lr_set_since_is_an_error_naming_the_key(tiny_whisper_dir, tiny_llm_dir, train_dump_dirs,
                                                                   tmp_path):
    args = (tiny_whisper_dir, tiny_llm_dir, train_dump_dirs)
    run(tiny_cfg(*args, tmp_path / "pre", "pretrain.yaml", "--max_steps", "2"))
    ft = ["--init_from", str(tmp_path / "pre" / "model"), "--save_interval", "1"]
    run(tiny_cfg(*args, tmp_path / "ft", "finetune.yaml", *ft, "--stop_after_steps", "1"))
    with pytest.raises(ConfigError, match=r"optim.plora_lr or optim.speech_encoder_lr was set or unset since it "
                                          r"was saved.*config.yaml"):
        run(tiny_cfg(*args, tmp_path / "ft", "finetune.yaml", *ft, "--optim.plora_lr", "1.0e-5"))


def test_speech_encoder_lr_scales_the_first_update_of_the_encoder_only(tiny_whisper_dir, tiny_llm_dir,
                                                                       train_dump_dirs, tmp_path):
    """With the encoder trained (model.freeze_speech_encoder: false), optim.speech_encoder_lr = lr / 10 moves each
    encoder weight a tenth as far in the first AdamW update (lr * g / |g|) and leaves the adapter's update as it was."""
    args = (tiny_whisper_dir, tiny_llm_dir, train_dump_dirs)
    one_update = ["--model.freeze_speech_encoder", "false", "--max_steps", "1",
                  "--optim.warmup_steps", "0", "--optim.weight_decay", "0"]
    same_cfg = tiny_cfg(*args, tmp_path / "same", "warmstart.yaml", *one_update)
    start = final_weights_init(same_cfg)
    run(same_cfg)
    run(tiny_cfg(*args, tmp_path / "low", "warmstart.yaml", *one_update, "--optim.speech_encoder_lr", "1.0e-4"))
    same, low = final_weights(tmp_path / "same"), final_weights(tmp_path / "low")
    encoder = [k for k in start if k.startswith("speech_encoder.")]
    adapter = [k for k in start if not k.startswith("speech_encoder.")]
    assert encoder and adapter and set(same) == set(low) == set(start)
    moved = [k for k in encoder if not torch.equal(same[k], start[k])]
    assert moved
    for k in moved:
        step, low_step = same[k] - start[k], low[k] - start[k]
        assert step.abs().max().item() == pytest.approx(1.0e-3, rel=1e-2)
        torch.testing.assert_close(low_step, step / 10, rtol=1e-3, atol=2e-7)  # fp32 spacing near 1
    assert all(torch.allclose(same[k], low[k], atol=1e-7) for k in adapter)
    assert any(not torch.equal(start[k], same[k]) for k in adapter)


def test_group_lr_without_its_weights_is_an_error_naming_the_key(tiny_whisper_dir, tiny_llm_dir, train_dump_dirs,
                                                                 tmp_path):
    args = (tiny_whisper_dir, tiny_llm_dir, train_dump_dirs)
    with pytest.raises(ConfigError, match=r"optim.speech_encoder_lr is set but the model has no trainable speech "
                                          r"encoder \(model.freeze_speech_encoder is true\)"):
        run(tiny_cfg(*args, tmp_path / "ws", "warmstart.yaml", "--optim.speech_encoder_lr", "1.0e-5"))


def test_plora_lr_must_be_positive(tmp_path):
    with pytest.raises(ConfigError, match="optim.plora_lr must be a positive number or null"):
        check_train_config(parse_config(TrainConfig, ["--config", str(TINY / "finetune.yaml"),
                                                      "--optim.plora_lr", "-1"]))
