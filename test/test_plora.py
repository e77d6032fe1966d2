"""Partial LoRA (blspkd/models/plora.py) on tiny random Llama and Qwen2 models (doc/method.md §6)."""
from __future__ import annotations

import copy
import json
import re

import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM, LlamaConfig, Qwen2Config

from blspkd.models.plora import PLoraLinear, apply_plora, enable_gradient_checkpointing, load_plora, plora_mask

VOCAB = 97


def _tiny(kind: str, seed: int = 0):
    torch.manual_seed(seed)
    common = dict(
        vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=128, pad_token_id=0, bos_token_id=1, eos_token_id=2,
    )
    config = LlamaConfig(**common) if kind == "llama" else Qwen2Config(**common)
    return AutoModelForCausalLM.from_config(config).eval()


def _randomise_lora(model, seed: int = 1) -> None:
    """peft initialises B = 0 (LoRA starts as the base model); give A and B real values so the tests can fail."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)


@pytest.fixture(params=["llama", "qwen2"])
def pair(request):
    """(base model, PLoRA model over an identical copy of it, with random non-zero adapters), in eval mode."""
    base = _tiny(request.param)
    plora = apply_plora(copy.deepcopy(base), {"lora_dropout": 0.0})
    _randomise_lora(plora)
    return base, plora.eval()


def _ids(batch: int = 2, length: int = 12, seed: int = 3) -> torch.Tensor:
    return torch.randint(3, VOCAB, (batch, length), generator=torch.Generator().manual_seed(seed))


def test_defaults_target_every_attention_and_mlp_projection():
    model = apply_plora(_tiny("llama"))
    wrapped = sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, PLoraLinear)})
    assert wrapped == ["down_proj", "gate_proj", "k_proj", "o_proj", "q_proj", "up_proj", "v_proj"]
    layer = next(m for m in model.modules() if isinstance(m, PLoraLinear))
    assert layer.r["default"] == 16 and layer.scaling["default"] == 1.0
    assert layer.lora_dropout["default"].p == 0.05
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_A" in n or "lora_B" in n for n in trainable)


def test_no_mask_and_zero_mask_are_the_base_model_bit_for_bit(pair):
    base, plora = pair
    ids = _ids()
    with torch.no_grad():
        ref = base(input_ids=ids).logits
        assert torch.equal(plora(input_ids=ids).logits, ref)
        with plora_mask(plora, torch.zeros(ids.shape)):
            assert torch.equal(plora(input_ids=ids).logits, ref)
        with plora_mask(plora, torch.ones(ids.shape)):
            assert not torch.allclose(plora(input_ids=ids).logits, ref, atol=1e-3)  # the adapters do act
            with plora_mask(plora, None):  # teacher pass inside a student context: PLoRA off
                assert torch.equal(plora(input_ids=ids).logits, ref)
            with plora.disable_adapter():
                assert torch.equal(plora(input_ids=ids).logits, ref)


def test_positions_before_the_first_masked_one_are_the_base_model(pair):
    base, plora = pair
    ids = _ids(length=14)
    mask = torch.zeros(ids.shape)
    mask[0, 5:9] = 1  # first speech token at 5 in row 0
    mask[1, 8:12] = 1  # at 8 in row 1
    with torch.no_grad():
        ref = base(input_ids=ids).logits
        with plora_mask(plora, mask):
            out = plora(input_ids=ids).logits
    assert torch.equal(out[0, :5], ref[0, :5])
    assert torch.equal(out[1, :8], ref[1, :8])
    assert not torch.allclose(out[0, 5:], ref[0, 5:], atol=1e-3)
    assert not torch.allclose(out[1, 8:], ref[1, 8:], atol=1e-3)


def test_direct_backbone_calls_see_the_mask(pair):
    """The composite model calls the decoder backbone itself (to compute logits only on the rows a loss uses)."""
    _, plora = pair
    ids = _ids()
    mask = torch.zeros(ids.shape)
    mask[:, 2:6] = 1
    backbone = plora.get_base_model().get_decoder()
    with torch.no_grad(), plora_mask(plora, mask):
        hidden = backbone(input_ids=ids).last_hidden_state
    with torch.no_grad(), plora_mask(plora, mask):
        full = plora(input_ids=ids, output_hidden_states=True).hidden_states[-1]
    with torch.no_grad():
        plain = backbone(input_ids=ids).last_hidden_state
    assert torch.equal(hidden, full)
    assert torch.equal(hidden[:, :2], plain[:, :2]) and not torch.allclose(hidden[:, 2:], plain[:, 2:], atol=1e-3)


def test_all_ones_mask_equals_ordinary_peft_lora(pair):
    base, plora = pair
    lora = get_peft_model(copy.deepcopy(base), LoraConfig(r=16, lora_alpha=16, lora_dropout=0.0,
                                                           target_modules="all-linear")).eval()
    missing, unexpected = lora.load_state_dict(plora.state_dict(), strict=True), None
    assert not missing.missing_keys and not missing.unexpected_keys and unexpected is None
    ids = _ids()
    with torch.no_grad(), plora_mask(plora, torch.ones(ids.shape, dtype=torch.bool)):
        out = plora(input_ids=ids).logits
    with torch.no_grad():
        ref = lora(input_ids=ids).logits
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-6)


def test_mask_is_per_token_formula():
    """One PLoRA layer against y = W x + m * (B A x) * alpha / r computed by hand."""
    torch.manual_seed(0)
    lin = torch.nn.Sequential(torch.nn.Linear(8, 6))
    model = apply_plora(lin, LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=["0"]))
    _randomise_lora(model)
    layer = model.base_model.model[0]
    x = torch.randn(2, 5, 8)
    m = torch.tensor([[0, 1, 1, 0, 0.5], [1, 0, 0, 0, 0]])
    with torch.no_grad(), plora_mask(model, m):
        y = model.get_base_model()(x)  # positional input: the pre-hook reads args[0] for (batch, length)
    W, b = layer.base_layer.weight, layer.base_layer.bias
    A, B = layer.lora_A["default"].weight, layer.lora_B["default"].weight
    expected = x @ W.T + b + m[..., None] * (x @ A.T @ B.T) * (8 / 4)
    torch.testing.assert_close(y, expected, rtol=1e-5, atol=1e-6)


def _generate(model, ids, attn, mask, use_cache, **kw):
    with torch.no_grad(), plora_mask(model, mask):
        return model.generate(input_ids=ids, attention_mask=attn, max_new_tokens=6, do_sample=False,
                              use_cache=use_cache, pad_token_id=0, eos_token_id=None, **kw)


def _left_padded_batch():
    ids = _ids(batch=3, length=10, seed=7)
    attn = torch.ones_like(ids)
    ids[1, :3], attn[1, :3] = 0, 0  # left padding, as generate expects for decoder-only models
    ids[2, :5], attn[2, :5] = 0, 0
    mask = torch.zeros(ids.shape)
    mask[0, 2:6], mask[1, 4:8], mask[2, 6:9] = 1, 1, 1
    return ids, attn, mask


def test_generation_with_cache_equals_without_cache(pair):
    base, plora = pair
    ids, attn, mask = _left_padded_batch()
    cached = _generate(plora, ids, attn, mask, use_cache=True)
    uncached = _generate(plora, ids, attn, mask, use_cache=False)
    assert cached.shape == (3, 16)
    assert torch.equal(cached, uncached)
    plain = _generate(plora, ids, attn, None, use_cache=True)
    assert torch.equal(plain, base.generate(input_ids=ids, attention_mask=attn, max_new_tokens=6, do_sample=False,
                                            pad_token_id=0, eos_token_id=None))
    assert not torch.equal(cached, plain)  # the prompt mask changes what is generated


def test_generation_decode_steps_get_no_lora(pair):
    """Reference: greedy loop of full forwards, mask = prompt mask padded with zeros over generated tokens."""
    _, plora = pair
    ids, attn, mask = _left_padded_batch()
    seq, am = ids.clone(), attn.clone()
    with torch.no_grad():
        for _ in range(6):
            full_mask = torch.cat([mask, torch.zeros(ids.shape[0], seq.shape[1] - ids.shape[1])], dim=1)
            pos = (am.cumsum(-1) - 1).clamp(min=0)
            with plora_mask(plora, full_mask):
                nxt = plora(input_ids=seq, attention_mask=am, position_ids=pos).logits[:, -1].argmax(-1)
            seq = torch.cat([seq, nxt[:, None]], dim=1)
            am = torch.cat([am, torch.ones_like(nxt[:, None])], dim=1)
    assert torch.equal(_generate(plora, ids, attn, mask, use_cache=True), seq)


def test_generation_from_inputs_embeds(pair):
    """The student path: prompt given as embeddings (speech vectors in the middle), generate with a KV cache."""
    _, plora = pair
    ids, attn, mask = _left_padded_batch()
    embed = plora.get_input_embeddings()
    with torch.no_grad():
        embeds = embed(ids)
        with plora_mask(plora, mask):
            out = plora.generate(inputs_embeds=embeds, attention_mask=attn, max_new_tokens=5, do_sample=False,
                                 pad_token_id=0, eos_token_id=None)
        seq_embeds, am, generated = embeds, attn.clone(), []
        for _ in range(5):  # reference: full forwards, mask padded with zeros over generated tokens
            full_mask = torch.cat([mask, torch.zeros(ids.shape[0], am.shape[1] - ids.shape[1])], dim=1)
            pos = (am.cumsum(-1) - 1).clamp(min=0)
            with plora_mask(plora, full_mask):
                nxt = plora(inputs_embeds=seq_embeds, attention_mask=am, position_ids=pos).logits[:, -1].argmax(-1)
            generated.append(nxt)
            seq_embeds = torch.cat([seq_embeds, embed(nxt[:, None])], dim=1)
            am = torch.cat([am, torch.ones_like(nxt[:, None])], dim=1)
    assert torch.equal(out, torch.stack(generated, dim=1))


def test_beam_search_expands_the_mask(pair):
    _, plora = pair
    ids, attn, mask = _left_padded_batch()
    cached = _generate(plora, ids, attn, mask, use_cache=True, num_beams=2)
    uncached = _generate(plora, ids, attn, mask, use_cache=False, num_beams=2)
    assert torch.equal(cached, uncached)


def test_save_load_round_trip(pair, tmp_path):
    base, plora = pair
    plora.save_pretrained(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["README.md", "adapter_config.json",
                                                         "adapter_model.safetensors"]
    saved = json.loads((tmp_path / "adapter_config.json").read_text())
    assert saved["r"] == 16 and saved["peft_type"] == "LORA"
    loaded = load_plora(copy.deepcopy(base), str(tmp_path)).eval()
    ids = _ids()
    mask = torch.zeros(ids.shape)
    mask[:, 4:9] = 1
    with torch.no_grad():
        with plora_mask(plora, mask):
            ref = plora(input_ids=ids).logits
        with plora_mask(loaded, mask):
            out = loaded(input_ids=ids).logits
        assert torch.equal(out, ref)
        assert torch.equal(loaded(input_ids=ids).logits, base(input_ids=ids).logits)
    assert not any(p.requires_grad for p in loaded.parameters())
    trainable = load_plora(copy.deepcopy(base), str(tmp_path), is_trainable=True)
    assert any(p.requires_grad for p in trainable.parameters())


def test_gradients_reach_only_masked_positions_adapters(pair):
    _, plora = pair
    plora.train()
    ids = _ids()
    with plora_mask(plora, torch.zeros(ids.shape)):
        out = plora(input_ids=ids).logits
    assert not out.requires_grad  # mask zero: the LoRA branch is not even computed
    mask = torch.zeros(ids.shape)
    mask[:, 3:7] = 1
    with plora_mask(plora, mask):
        plora(input_ids=ids).logits.sum().backward()
    grads = {n: p.grad for n, p in plora.named_parameters() if p.requires_grad}
    assert grads and all(g is not None and torch.isfinite(g).all() for g in grads.values())
    assert any(g.abs().sum() > 0 for g in grads.values())


def test_lora_branch_runs_on_masked_rows_only(pair):
    """The adapters see the rows with m_t != 0 and nothing else (text rows cost no LoRA matmuls), with their m_t."""
    _, plora = pair
    ids = _ids(batch=2, length=12)
    mask = torch.zeros(ids.shape)
    mask[0, 3:7], mask[1, 5:6] = 1, 0.5
    seen = []
    layer = next(m for m in plora.modules() if isinstance(m, PLoraLinear))
    handle = layer.lora_A["default"].register_forward_hook(lambda mod, inp, out: seen.append(inp[0].shape))
    try:
        with torch.no_grad(), plora_mask(plora, mask):
            plora(input_ids=ids)
    finally:
        handle.remove()
    assert seen == [torch.Size([5, layer.in_features])]


@pytest.mark.parametrize("backward_inside_context", [True, False])
def test_gradient_checkpointing_gives_the_same_gradients(backward_inside_context):
    """Recomputed layers get the mask of their own forward: inside the context, after it has exited, and while a
    different mask (another forward) is set."""
    base = _tiny("llama")
    ids = _ids()
    mask = torch.zeros(ids.shape)
    mask[:, 2:8] = 1
    grads = []
    for checkpointing in (False, True):
        model = apply_plora(copy.deepcopy(base), {"lora_dropout": 0.0})
        _randomise_lora(model)
        model.train()
        if checkpointing:
            enable_gradient_checkpointing(model)
        with plora_mask(model, mask):
            loss = model(input_ids=ids, use_cache=False).logits.pow(2).mean()
            if backward_inside_context:
                loss.backward()
        if not backward_inside_context:
            with plora_mask(model, torch.ones(ids.shape)):  # a later forward's mask must not leak into the recompute
                model(input_ids=ids, use_cache=False)
            loss.backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad})
    assert grads[0].keys() == grads[1].keys()
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], rtol=1e-5, atol=1e-7)


def test_gradient_checkpointing_without_the_mask_context_is_refused():
    model = apply_plora(_tiny("llama"), {"lora_dropout": 0.0}).train()
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    ids = _ids()
    with pytest.raises(RuntimeError, match=re.escape(
            "was enabled without PLoRA's recompute context, so its recomputation in backward would not see the token "
            "mask (wrong LoRA gradients); enable it with blspkd.models.plora.enable_gradient_checkpointing(model)")):
        with plora_mask(model, torch.ones(ids.shape)):
            model(input_ids=ids, use_cache=False)
    with torch.no_grad(), plora_mask(model, torch.ones(ids.shape)):  # no backward, no recomputation: allowed
        model(input_ids=ids, use_cache=False)


def test_clear_errors():
    with pytest.raises(ValueError, match="the model has no PLoRA layers"):
        with plora_mask(_tiny("llama"), torch.ones(1, 3)):
            pass
    model = apply_plora(_tiny("llama"))
    with pytest.raises(ValueError, match=r"the mask must be \(batch, length\), got shape \(3,\)"):
        with plora_mask(model, torch.ones(3)):
            pass
    ids = _ids(length=6)
    with pytest.raises(ValueError, match=re.escape(
            "plora_mask: the mask has 5 columns but no forward inside the context had that sequence length "
            "(lengths seen: [6]); the mask needs one column per input position of the forward it belongs to")):
        with torch.no_grad(), plora_mask(model, torch.ones(2, 5)):
            model(input_ids=ids)
    with pytest.raises(RuntimeError, match="PLoRA cannot be merged"):
        model.merge_and_unload()
    with pytest.raises(ValueError, match="plain LoRA only"):
        apply_plora(_tiny("llama"), {"use_dora": True})
