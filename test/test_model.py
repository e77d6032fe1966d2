"""Chat framing, collation and the composite BlspKdModel on tiny random models (and the real ones when available)."""
import pytest
import torch
from fixtures.tiny_models import make_tiny_items
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from blspkd.data.collate import BlspKdCollator
from blspkd.data.prompts import ChatFraming
from blspkd.models import BlspKdConfig, BlspKdModel
from blspkd.models.cif import CFormerOutput
from blspkd.utils.config import ConfigError

INSTRUCTION = "Repeat the following sentence exactly."


# ---- framing and collation -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("which,end", [("tiny_llm_dir", "<|eot_id|>"), ("tiny_qwen2_dir", "<|im_end|>")])
def test_framing_reproduces_the_chat_template(request, which, end):
    tok = AutoTokenizer.from_pretrained(request.getfixturevalue(which))
    framing = ChatFraming(tok)
    text = "the cat sat on the mat"
    for instruction in (None, INSTRUCTION):
        ids = framing.prefix_ids(instruction) + framing.transcript_ids(text) + framing.suffix_ids
        user = text if instruction is None else instruction + "\n" + text
        expected = tok.apply_chat_template([{"role": "user", "content": user}], tokenize=False,
                                           add_generation_prompt=True)
        assert tok.decode(ids) == expected
    assert tok.decode(framing.end_of_turn_ids) == end
    assert framing.transcript_ids(text) == tok(text, add_special_tokens=False)["input_ids"]


def test_framing_system_prompt_and_missing_template(tiny_qwen2_dir):
    tok = AutoTokenizer.from_pretrained(tiny_qwen2_dir)
    assert tok.decode(ChatFraming(tok, system_prompt="Be brief.").prefix_ids()).startswith(
        "<|im_start|>system\nBe brief.<|im_end|>")
    tok.chat_template = None
    with pytest.raises(ValueError, match="has no chat template"):
        ChatFraming(tok)


def test_collator_layout(tiny_llm_dir, tiny_blspkd_config):
    tok = AutoTokenizer.from_pretrained(tiny_llm_dir)
    collate = BlspKdCollator(tok, tiny_blspkd_config(default_instruction=INSTRUCTION))
    items = make_tiny_items(3, responses=True)
    items[1].pop("response")
    items[2]["instruction"] = "Continue the following text in a coherent style: "
    batch = collate(items)
    assert set(batch) == {"feats", "feats_lengths", "input_ids", "attention_mask", "transcript_mask",
                          "response_mask", "num_tokens"}
    assert batch["feats_lengths"].tolist() == [len(it["feats"]) for it in items]
    for i, item in enumerate(items):
        ids = batch["input_ids"][i]
        assert ids[batch["transcript_mask"][i]].tolist() == tok(item["text"], add_special_tokens=False)["input_ids"]
        assert int(batch["num_tokens"][i]) == int(batch["transcript_mask"][i].sum())
        response = tok.decode(ids[batch["response_mask"][i]])
        assert response == (item["response"] + "<|eot_id|>" if "response" in item else "")
        valid = tok.decode(ids[batch["attention_mask"][i].bool()])
        assert ("Continue the following text in a coherent style:\n" if i == 2 else INSTRUCTION + "\n") in valid
        torch.testing.assert_close(batch["feats"][i, : len(item["feats"])], torch.from_numpy(item["feats"]))
        assert torch.all(batch["feats"][i, len(item["feats"]):] == 0)


def test_collator_rejects_empty_transcript(tiny_llm_dir, tiny_blspkd_config):
    collate = BlspKdCollator(AutoTokenizer.from_pretrained(tiny_llm_dir), tiny_blspkd_config())
    items = make_tiny_items(2)
    items[1]["text"] = "   "
    with pytest.raises(ValueError, match="utterance utt001: empty transcript"):
        collate(items)


def test_config_rejects_unknown_names(tiny_blspkd_config):
    with pytest.raises(ConfigError, match=r"config: losses: unknown key 'input_KL' \(did you mean 'input_kl'\?\)"):
        tiny_blspkd_config(losses={"input_KL": 1.0})
    with pytest.raises(ConfigError, match=r"adapter: unknown key 'num_layers' \(did you mean 'num_pre_cif_layers'\?\)"):
        tiny_blspkd_config(adapter={"num_layers": 2})


def test_config_json_round_trips_and_reads_configs_saved_before_typed_sub_configs(tmp_path):
    import json

    from blspkd.models.configuration_blspkd import CFormerConfig, LossWeights, PLoraConfig
    from blspkd.utils.config import to_dict

    config = BlspKdConfig(speech_encoder="enc", llm="lm", adapter={"num_heads": 2}, losses={"input_kl": 1, "cif": 0.5},
                          plora={"r": 4, "target_modules": ["q_proj", "v_proj"]}, system_prompt="S",
                          instruction_separator="\n\n", llm_dtype="bfloat16")
    config.save_pretrained(tmp_path / "new")
    loaded = BlspKdConfig.from_pretrained(tmp_path / "new")
    assert to_dict(loaded) == to_dict(config)
    assert loaded.plora == PLoraConfig(r=4, target_modules=["q_proj", "v_proj"])
    # the config.json of a model saved before the sub-configs were typed (what that code wrote for the same values)
    old = {"adapter": {"d_model": None, "ffn_dim": None, "frame_pooling": 1, "num_heads": 2, "num_post_cif_layers": 4,
                       "num_pre_cif_layers": 4, "post_cif_dropout": 0.1, "pre_cif_dropout": 0.0, "threshold": 1.0},
           "cif_ce_temperature": 0.1, "default_instruction": None, "freeze_speech_encoder": True,
           "instruction_separator": "\n", "llm": "lm", "llm_dtype": "float32", "losses": {"cif": 0.5, "input_kl": 1.0},
           "model_type": "blspkd", "pad_to_30s": False, "plora": {"r": 4}, "speech_encoder": "enc",
           "system_prompt": "S", "temperature": 2.0, "transformers_version": "5.24.0"}
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "config.json").write_text(json.dumps(old))
    before = BlspKdConfig.from_pretrained(tmp_path / "old")
    assert before.adapter == CFormerConfig(num_heads=2) and before.losses == LossWeights(input_kl=1.0, cif=0.5)
    assert before.plora == PLoraConfig(r=4) and before.system_prompt == "S"


# ---- the composite model ---------------------------------------------------------------------------------------------
ALL_LOSSES = {"input_kl": 1.0, "response_kl": 0.5, "response_ce": 0.3, "cif": 1.0, "cif_ce": 0.2}


def _randomize_plora(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.llm.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)


def _batch(model, n=3, seed=0, responses=True):
    return BlspKdCollator(model.tokenizer, model.config)(make_tiny_items(n, seed, responses))


def test_forward_returns_losses_stats_and_gradients(tiny_blspkd_config):
    torch.manual_seed(0)
    model = BlspKdModel(tiny_blspkd_config(losses=ALL_LOSSES, plora={"r": 4}))
    batch = _batch(model)
    out = model(**batch)
    expected = sum(w * out[k] for k, w in ALL_LOSSES.items())
    assert out["loss"].item() == pytest.approx(expected.item(), rel=1e-6)
    for key in ("agreement", "num_tokens", "cif_ratio", "cif_acc", "input_kl"):
        assert isinstance(out["stats"][key], float)
    assert out["stats"]["num_tokens"] == float(batch["num_tokens"].sum())
    out["loss"].backward()
    names = [n for n, _ in model.trainable_named_parameters()]
    assert any(n.startswith("adapter.") for n in names) and any("lora_" in n for n in names)
    assert not any(n.startswith(("speech_encoder.", )) for n in names)
    assert not any(n.startswith("llm.") and "lora_" not in n for n in names)
    grads = {n: p.grad for n, p in model.trainable_named_parameters()}
    assert grads["adapter.out_proj.weight"] is not None and grads["adapter.out_proj.weight"].abs().sum() > 0
    lora_b = [g for n, g in grads.items() if "lora_B" in n]
    assert lora_b and all(g is not None for g in lora_b)


def test_gradient_checkpointing_gives_the_same_gradients(tiny_blspkd_config):
    """Training mode, dropout 0: PLoRA and adapter gradients with activation checkpointing equal those without, though
    backward runs after the model left its PLoRA mask context (as in the trainer); the layers are really recomputed,
    although the frozen LLM runs in eval mode."""
    grads = []
    for checkpointing in (False, True):
        torch.manual_seed(0)
        model = BlspKdModel(tiny_blspkd_config(losses=ALL_LOSSES, plora={"r": 4, "lora_dropout": 0.0},
                                               adapter={"post_cif_dropout": 0.0})).train()
        _randomize_plora(model)
        if checkpointing:
            model.gradient_checkpointing_enable()
            assert all(layer.gradient_checkpointing for layer in model.backbone.layers)
        calls: list[int] = []
        model.backbone.layers[0].self_attn.register_forward_pre_hook(lambda *_, calls=calls: calls.append(1))
        loss = model(**_batch(model))["loss"]
        calls.clear()
        loss.backward()
        assert len(calls) == (1 if checkpointing else 0)  # the student's layer 0 recomputed in backward
        grads.append({n: p.grad.clone() for n, p in model.trainable_named_parameters()})
    assert grads[0].keys() == grads[1].keys()
    assert any("lora_A" in n for n in grads[0]) and any(n.startswith("adapter.") for n in grads[0])
    assert any(grads[0][n].abs().sum() > 0 for n in grads[0] if "lora_A" in n)
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], rtol=1e-5, atol=1e-7)


def test_teacher_is_the_base_llm_without_grad_and_ignores_plora(tiny_blspkd_config, tiny_llm_dir):
    model = BlspKdModel(tiny_blspkd_config(plora={"r": 4}))
    _randomize_plora(model)
    batch = _batch(model)
    rows = batch["transcript_mask"]
    (hidden,) = model.teacher_hidden(batch["input_ids"], batch["attention_mask"], [rows])
    logits = model.lm_head(hidden)
    assert not hidden.requires_grad
    # the teacher pass leaves the LoRA weights' requires_grad as it found them (peft's disable_adapter() would not)
    lora = [p for n, p in model.llm.named_parameters() if "lora_" in n]
    lora[0].requires_grad_(False)
    model.teacher_hidden(batch["input_ids"], batch["attention_mask"], [rows])
    assert [p.requires_grad for p in lora] == [False] + [True] * (len(lora) - 1)
    base = AutoModelForCausalLM.from_pretrained(tiny_llm_dir).eval()
    ref = base(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[rows]
    torch.testing.assert_close(logits, ref, atol=1e-5, rtol=1e-5)
    # the same sequences left-padded give the same rows: position ids follow the attention mask
    lengths = batch["attention_mask"].sum(1)
    shift = [int(lengths.max() - n) for n in lengths]
    left = {k: torch.stack([torch.roll(batch[k][i], s) for i, s in enumerate(shift)])
            for k in ("input_ids", "attention_mask", "transcript_mask")}
    (left_hidden,) = model.teacher_hidden(left["input_ids"], left["attention_mask"], [left["transcript_mask"]])
    torch.testing.assert_close(model.lm_head(left_hidden), ref, atol=1e-4, rtol=1e-4)


def test_training_mode_keeps_the_frozen_llm_deterministic(tiny_whisper_dir, tiny_llm_dir, tmp_path):
    """An LLM whose config has dropout: in training mode the teacher is still the deterministic base LLM (the frozen
    LLM and encoder stay in eval mode) while the adapter and PLoRA's own dropout train."""
    import json
    import shutil

    from fixtures.tiny_models import make_tiny_blspkd_config

    llm = tmp_path / "llm_with_dropout"
    shutil.copytree(tiny_llm_dir, llm)
    config = json.loads((llm / "config.json").read_text())
    (llm / "config.json").write_text(json.dumps({**config, "attention_dropout": 0.5}))
    model = BlspKdModel(make_tiny_blspkd_config(tiny_whisper_dir, llm, plora={"r": 4, "lora_dropout": 0.5})).train()
    batch = _batch(model)
    rows = batch["transcript_mask"]
    teacher = [model.lm_head(model.teacher_hidden(batch["input_ids"], batch["attention_mask"], [rows])[0])
               for _ in range(2)]
    torch.testing.assert_close(teacher[0], teacher[1], rtol=0, atol=0)
    base = AutoModelForCausalLM.from_pretrained(llm).eval()
    ref = base(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[rows]
    torch.testing.assert_close(teacher[0], ref, atol=1e-5, rtol=1e-5)
    assert model.training and model.adapter.training and not model.speech_encoder.encoder.training
    assert not model.backbone.training and not model.backbone.layers[0].self_attn.training
    lora = [m for m in model.llm.modules() if hasattr(m, "lora_dropout")]
    assert lora and all(m.lora_dropout.training for m in lora)
    _randomize_plora(model)
    student = [model(**batch)["stats"]["input_kl"] for _ in range(2)]
    assert student[0] != student[1]  # PLoRA's dropout (and the adapter's) still draw
    model.eval()
    assert not any(m.lora_dropout.training for m in lora) and not model.adapter.training


def test_oracle_adapter_gives_zero_kl(tiny_blspkd_config, monkeypatch):
    """An adapter that outputs the transcript's own token embeddings makes the student the teacher."""
    model = BlspKdModel(tiny_blspkd_config(losses={"input_kl": 1.0, "response_kl": 1.0, "cif": 1.0}))
    batch = _batch(model)
    ids = batch["input_ids"]
    n = batch["num_tokens"]
    oracle = torch.zeros(len(n), int(n.max()), model.llm.config.hidden_size)
    mask = torch.arange(int(n.max())).view(1, -1) < n.view(-1, 1)
    oracle[mask] = model.llm.get_input_embeddings()(ids[batch["transcript_mask"]]).detach()
    monkeypatch.setattr(model, "encode_speech",
                        lambda feats, lengths, num_tokens=None: CFormerOutput(oracle, mask, n, n.float(), oracle))
    out = model(**batch)
    assert out["input_kl"].item() < 1e-6 and out["response_kl"].item() < 1e-6
    assert out["stats"]["agreement"] == 1.0
    assert out["cif"].item() == 0.0
    # a wrong adapter output is seen: the same check fails for shifted embeddings
    monkeypatch.setattr(model, "encode_speech", lambda feats, lengths, num_tokens=None: CFormerOutput(
        oracle.roll(1, dims=1), mask, n, n.float(), oracle))
    assert model(**batch)["input_kl"].item() > 1e-3


def test_warm_start_losses_skip_the_llm(tiny_blspkd_config):
    model = BlspKdModel(tiny_blspkd_config(losses={"cif": 1.0, "cif_ce": 1.0}))
    calls = []
    model.backbone.register_forward_hook(lambda *a: calls.append(1))
    out = model(**_batch(model))
    assert set(out) == {"cif", "cif_ce", "loss", "stats"} and not calls
    out["loss"].backward()


def test_save_load_round_trip(tiny_blspkd_config, tmp_path):
    torch.manual_seed(1)
    model = BlspKdModel(tiny_blspkd_config(losses=ALL_LOSSES, plora={"r": 4},
                                           default_instruction=INSTRUCTION)).eval()
    _randomize_plora(model)
    with torch.no_grad():
        for p in model.adapter.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    model.save_pretrained(tmp_path)
    saved = load_file(str(tmp_path / "model.safetensors"))
    assert set(saved) == {n for n, _ in model.trainable_named_parameters()}
    assert not any(k.startswith("speech_encoder.") or ("lora_" not in k and k.startswith("llm.")) for k in saved)
    assert (tmp_path / "config.json").exists() and (tmp_path / "tokenizer_config.json").exists()
    assert (tmp_path / "preprocessor_config.json").exists()
    loaded = BlspKdModel.from_pretrained(tmp_path).eval()
    assert isinstance(loaded.config, BlspKdConfig) and loaded.config.losses.enabled() == ALL_LOSSES
    batch = _batch(model)
    a, b = model(**batch), loaded(**batch)
    for key in ALL_LOSSES:
        assert a[key].item() == b[key].item()
    assert model.generate(batch["feats"], batch["feats_lengths"], max_new_tokens=4) == \
        loaded.generate(batch["feats"], batch["feats_lengths"], max_new_tokens=4)


def test_load_trainable_state_dict_errors(tiny_blspkd_config):
    model = BlspKdModel(tiny_blspkd_config())
    sd = model.trainable_state_dict()
    with pytest.raises(KeyError, match="weights not in this model"):
        model.load_trainable_state_dict({**sd, "adapter.nonexistent": torch.zeros(1)})
    sd.pop("adapter.out_proj.bias")
    with pytest.raises(KeyError, match="missing"):
        model.load_trainable_state_dict(sd)


def test_generate_batched_equals_single_cache_and_beam(tiny_blspkd_config):
    torch.manual_seed(2)
    model = BlspKdModel(tiny_blspkd_config(plora={"r": 4})).eval()
    _randomize_plora(model)
    batch = _batch(model, n=3, seed=5)
    feats, lengths = batch["feats"], batch["feats_lengths"]
    instructions = [None, INSTRUCTION, "Continue the following text in a coherent style:"]
    inputs = model.build_generation_inputs(feats, lengths, instructions)
    speech = model.encode_speech(feats, lengths)
    assert inputs["speech_mask"].sum(1).tolist() == speech.num_tokens.tolist()
    assert speech.num_tokens.tolist() == speech.alpha_sum.round().clamp(min=1).long().tolist()
    greedy = model.generate(feats, lengths, instructions, max_new_tokens=6)
    no_cache = model.generate(feats, lengths, instructions, max_new_tokens=6, use_cache=False)
    assert greedy == no_cache
    beam = model.generate(feats, lengths, instructions, max_new_tokens=6, num_beams=3)
    for i in range(3):
        one = (feats[i:i + 1, : lengths[i]], lengths[i:i + 1], instructions[i:i + 1])
        assert model.generate(*one, max_new_tokens=6) == [greedy[i]]
        assert model.generate(*one, max_new_tokens=6, num_beams=3) == [beam[i]]


def test_plora_changes_the_student_only_on_speech(tiny_blspkd_config):
    """Random PLoRA weights change input_kl (the student) but not the teacher rows."""
    model = BlspKdModel(tiny_blspkd_config(plora={"r": 4})).eval()
    batch = _batch(model)
    before = model(**batch)["input_kl"].item()
    (t0,) = model.teacher_hidden(batch["input_ids"], batch["attention_mask"], [batch["transcript_mask"]])
    _randomize_plora(model)
    after = model(**batch)["input_kl"].item()
    (t1,) = model.teacher_hidden(batch["input_ids"], batch["attention_mask"], [batch["transcript_mask"]])
    assert abs(after - before) > 1e-4
    assert torch.equal(t0, t1)


def test_qwen2_llm_and_frame_pooling(tiny_whisper_dir, tiny_qwen2_dir):
    from fixtures.tiny_models import make_tiny_blspkd_config

    config = make_tiny_blspkd_config(tiny_whisper_dir, tiny_qwen2_dir, adapter={"frame_pooling": 2},
                                     losses={"input_kl": 1.0, "cif": 1.0}, plora={"r": 2})
    model = BlspKdModel(config)
    out = model(**_batch(model))
    assert torch.isfinite(out["loss"])
    out["loss"].backward()
    assert len(model.generate(*[_batch(model)[k] for k in ("feats", "feats_lengths")], max_new_tokens=3)) == 3


@pytest.mark.real_models
@pytest.mark.slow
def test_real_smollm2_oracle_kl_is_zero(request, monkeypatch):
    try:
        real = request.getfixturevalue("real_models")
    except pytest.FixtureLookupError:
        pytest.skip("the real_models fixture (test/fixtures/real_models.py) is not available")
    config = BlspKdConfig(speech_encoder=str(real.whisper_dir), llm=str(real.llm_dir),
                          adapter={"num_pre_cif_layers": 1, "num_post_cif_layers": 1, "num_heads": 6},
                          default_instruction=INSTRUCTION)
    model = BlspKdModel(config).eval()
    batch = _batch(model, n=2)
    ids, n = batch["input_ids"], batch["num_tokens"]
    mask = torch.arange(int(n.max())).view(1, -1) < n.view(-1, 1)
    oracle = torch.zeros(len(n), int(n.max()), model.llm.config.hidden_size)
    oracle[mask] = model.llm.get_input_embeddings()(ids[batch["transcript_mask"]]).detach()
    monkeypatch.setattr(model, "encode_speech",
                        lambda feats, lengths, num_tokens=None: CFormerOutput(oracle, mask, n, n.float(), oracle))
    out = model(**batch)
    assert out["input_kl"].item() < 1e-6 and out["stats"]["agreement"] == 1.0


@pytest.mark.gpu
def test_bf16_autocast_on_gpu(tiny_blspkd_config):
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    torch.manual_seed(0)
    model = BlspKdModel(tiny_blspkd_config(losses=ALL_LOSSES, plora={"r": 4})).cuda()
    batch = {k: v.cuda() for k, v in _batch(model).items()}
    ref = model(**batch)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        out = model(**batch)
    assert torch.isfinite(out["loss"]) and out["loss"].dtype == torch.float32
    assert out["input_kl"].item() == pytest.approx(ref["input_kl"].item(), rel=0.1, abs=1e-3)
    out["loss"].backward()
    assert all(torch.isfinite(p.grad).all() for _, p in model.trainable_named_parameters() if p.grad is not None)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        texts = model.eval().generate(batch["feats"], batch["feats_lengths"], max_new_tokens=4)
    assert len(texts) == 3
