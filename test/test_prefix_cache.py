"""The fixed-prefix KV cache (blspkd/models/prefix_cache.py) against the plain path (cache_prefix: false).

Same losses and gradients of every trainable parameter (fp32, 1e-5 relative) with mixed instructions in one batch,
PLoRA on and off, gradient checkpointing on, Llama and Qwen2; the same generated tokens (greedy and beam); the cache
turned off with a logged reason where the prefix is not constant.
"""
from __future__ import annotations

import logging

import pytest
import torch
from fixtures.tiny_models import make_tiny_blspkd_config, make_tiny_items

from blspkd.data.collate import BlspKdCollator
from blspkd.models import BlspKdModel

ALL_LOSSES = {"input_kl": 1.0, "response_kl": 0.5, "response_ce": 0.3, "cif": 1.0, "cif_ce": 0.2}
INSTRUCTIONS = [None, "Repeat the following sentence exactly.", "Continue the following text in a coherent style:",
                "Repeat the following sentence exactly."]


def _model(whisper, llm, cache_prefix, plora, checkpointing=False):
    torch.manual_seed(0)
    config = make_tiny_blspkd_config(whisper, llm, losses=ALL_LOSSES, cache_prefix=cache_prefix,
                                     plora={"r": 4, "lora_dropout": 0.0} if plora else None,
                                     adapter={"post_cif_dropout": 0.0})
    model = BlspKdModel(config).train()
    if plora:
        g = torch.Generator().manual_seed(1)
        with torch.no_grad():
            for name, p in model.llm.named_parameters():
                if "lora_B" in name:
                    p.copy_(torch.randn(p.shape, generator=g) * 0.5)
    if checkpointing:
        model.gradient_checkpointing_enable()
    return model


def _mixed_batch(model, n=4, seed=3):
    items = make_tiny_items(n, seed, responses=True)
    for item, instruction in zip(items, INSTRUCTIONS):
        if instruction:
            item["instruction"] = instruction
    return BlspKdCollator(model.tokenizer, model.config)(items)


def _losses_and_grads(model, batch):
    out = model(**batch)
    out["loss"].backward()
    grads = {n: p.grad.clone() for n, p in model.trainable_named_parameters() if p.grad is not None}
    return {k: out[k].detach() for k in (*ALL_LOSSES, "loss")}, grads, out["stats"]


@pytest.mark.parametrize("llm_fixture, plora, checkpointing", [
    ("tiny_llm_dir", True, True), ("tiny_llm_dir", False, False), ("tiny_qwen2_dir", True, False),
    ("tiny_qwen2_dir", False, True),
])
def test_cache_gives_the_losses_and_gradients_of_the_plain_path(request, tiny_whisper_dir, llm_fixture, plora,
                                                                 checkpointing):
    llm = request.getfixturevalue(llm_fixture)
    results = []
    for cache_prefix in (False, True):
        model = _model(tiny_whisper_dir, llm, cache_prefix, plora, checkpointing)
        batch = _mixed_batch(model)
        results.append(_losses_and_grads(model, batch))
        # three distinct instructions (the default one included): three prefixes built, each once
        assert model.prefix_store.built == (3 if cache_prefix else 0)
    (plain, plain_grads, plain_stats), (cached, cached_grads, cached_stats) = results
    for name in plain:
        torch.testing.assert_close(cached[name], plain[name], rtol=1e-5, atol=1e-7)
    assert plain_grads.keys() == cached_grads.keys()
    assert any("lora_B" in n for n in plain_grads) == plora and any(n.startswith("adapter.") for n in plain_grads)
    for name in plain_grads:
        torch.testing.assert_close(cached_grads[name], plain_grads[name], rtol=1e-5, atol=1e-7)
    # the cached path runs the LLM over the positions after the prefixes only
    assert cached_stats["llm_positions"] < 0.8 * plain_stats["llm_positions"]
    assert cached_stats["agreement"] == plain_stats["agreement"]


def test_prefix_states_are_built_once_and_reused(tiny_whisper_dir, tiny_llm_dir):
    model = _model(tiny_whisper_dir, tiny_llm_dir, True, True).eval()
    batch = _mixed_batch(model)
    first = model(**batch)["loss"]
    assert model.prefix_store.built == 3
    second = model(**batch)["loss"]
    assert model.prefix_store.built == 3  # the second forward reads the cache
    assert torch.equal(first, second)


@pytest.mark.parametrize("num_beams", [1, 3])
def test_generation_with_the_cache_gives_the_same_tokens(tiny_whisper_dir, tiny_llm_dir, num_beams):
    texts = []
    for cache_prefix in (False, True):
        model = _model(tiny_whisper_dir, tiny_llm_dir, cache_prefix, plora=True).eval()
        batch = _mixed_batch(model)
        texts.append(model.generate(batch["feats"], batch["feats_lengths"], INSTRUCTIONS, max_new_tokens=8,
                                    num_beams=num_beams))
        assert model.prefix_store.built == (3 if cache_prefix else 0)
    assert texts[0] == texts[1] and any(texts[0])


def test_cache_is_off_with_a_logged_reason_when_the_prefix_can_change(tiny_whisper_dir, tiny_llm_dir, caplog):
    results = []
    for cache_prefix in (False, True):
        model = _model(tiny_whisper_dir, tiny_llm_dir, cache_prefix, plora=False)
        model.llm.model.layers[0].self_attn.q_proj.weight.requires_grad_(True)  # an unfrozen LLM weight
        with caplog.at_level(logging.WARNING, logger="blspkd.models.modeling_blspkd"):
            results.append(model(**_mixed_batch(model))["loss"].detach())
        assert model.prefix_store.built == 0
    assert "cache_prefix: off (LLM parameters outside PLoRA are trainable (e.g. model.layers.0.self_attn.q_proj" \
        ".weight)" in caplog.text
    assert torch.equal(results[0], results[1])
