"""Fixed-prefix KV cache: the frozen LLM's keys and values of each chat prefix, computed once per process.

Every BLSP-KD sequence starts with a prefix (system prompt, user header, instruction; blspkd/data/prompts.py) that is
the same for every example with the same instruction. The LLM is frozen and PLoRA leaves every position before the
first speech token exactly the base model's (blspkd/models/plora.py), so the prefix's keys and values at every layer
are constants of the run. ``PrefixKVStore`` computes them on first use (the base LLM alone on the prefix tokens, no
gradient, adapters off) and the teacher pass, the student pass and generation then run only over what follows:

    no cache:  LLM([prefix_b | rest_b | pad])                    (B, P_b + R_b) queries per row
    cache:     LLM([rest_b | pad], past = [pad | prefix_b])      (B, R_max) queries; keys = [prefix slot | rest]

A batch mixing instructions pads the prefixes to one slot of P_max = max_b P_b positions on the LEFT, and the
attention mask covers only each row's real prefix positions. That is exactly the no-cache computation: a masked key
gets probability exp(-inf) = 0, position ids continue at P_b after each row's own prefix (the cached keys carry the
rotary positions 0 .. P_b - 1 they were computed at), and no query ever sits on a padded slot. Only the summation
order of the attention differs, so results agree to float rounding (tested against the no-cache path in fp32).

When the prefix is NOT constant the cache is off, with the reason logged once (``constant_prefix_reason``): an LLM
parameter other than PLoRA's trainable (unfrozen LLM, global LoRA, a trainable prompt), dropout inside the base LLM
during training, or sliding-window / non-attention layers whose cache layout differs.

FSDP: building a prefix's keys/values is a forward of the sharded LLM, a collective every rank must run together.
``PrefixKVStore.entries`` therefore all-gathers each call's missing prefixes over the ranks when the LLM's parameters
are FSDP-sharded (DTensors) and every rank builds the union in the same order; DDP ranks hold full replicas and build
their own.
"""
from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Callable

import torch
from transformers.cache_utils import Cache, DynamicCache, DynamicLayer

logger = logging.getLogger(__name__)

# Entries kept (least recently used dropped first): a few per task in practice, one per distinct text instruction of a
# spoken-instruction corpus. About 1 MB each for SmolLM2-135M (30 layers x 2 x 3 heads x 25 tokens x 64 x 4 bytes).
MAX_ENTRIES = 256

KV = list[tuple[torch.Tensor, torch.Tensor]]  # per layer (keys, values), each (batch, kv_heads, length, head_dim)


class _ReadOnlyLayer(DynamicLayer):
    """A cache layer holding prefix keys/values that ``update`` reads but never writes: it returns [prefix | new] and
    keeps the prefix. So the teacher and the student pass can share one cache, and gradient checkpointing can replay a
    layer (its second ``update`` sees the same prefix)."""

    def __init__(self, keys: torch.Tensor, values: torch.Tensor):
        super().__init__()
        self.keys, self.values, self.device, self.is_initialized = keys, values, keys.device, True

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        return torch.cat([self.keys, key_states], dim=-2), torch.cat([self.values, value_states], dim=-2)


class ReadOnlyPrefixCache(Cache):
    """The cache of a training forward: prefix keys/values of each row, never grown."""

    def __init__(self, kv: KV):
        super().__init__(layers=[_ReadOnlyLayer(k, v) for k, v in kv])


def generation_cache(kv: KV, expand: int = 1) -> DynamicCache:
    """A writable copy for ``generate`` (which appends the prompt and the generated tokens to it), each row repeated
    ``expand`` times as generate expands its inputs for beams / return sequences."""
    cache = DynamicCache(ddp_cache_data=[(k, v) for k, v in kv])  # DynamicLayer.update copies (torch.cat)
    if expand > 1:
        cache.batch_repeat_interleave(expand)
    return cache


def constant_prefix_reason(llm: torch.nn.Module, training: bool) -> str | None:
    """Why the prefix's keys/values are not constants of the run (None: they are)."""
    config = llm.config.get_text_config() if hasattr(llm.config, "get_text_config") else llm.config
    layer_types = getattr(config, "layer_types", None) or ["full_attention"]
    other = sorted(set(layer_types) - {"full_attention"})
    if other or getattr(config, "use_sliding_window", False):
        return f"the LLM has {other or ['sliding_attention']} layers (only full-attention layers are cached)"
    trainable = [n for n, p in llm.named_parameters() if p.requires_grad and "lora_" not in n]
    if trainable:
        return f"LLM parameters outside PLoRA are trainable (e.g. {trainable[0]}), so the prefix changes in training"
    if training:
        rates = {k: v for k, v in config.to_dict().items()
                 if ("dropout" in k or "pdrop" in k) and isinstance(v, float) and v > 0}
        if rates:
            return f"the base LLM applies dropout in training ({rates}), so the prefix is not deterministic"
    return None


def _is_fsdp_sharded(module: torch.nn.Module) -> bool:
    return any(hasattr(p, "device_mesh") for p in module.parameters())


class PrefixKVStore:
    """Keys/values of prefixes (token-id tuples) keyed also by device and autocast dtype, so a bf16-autocast training
    forward and an fp32 validation forward each see the states their no-cache computation would have."""

    def __init__(self, max_entries: int = MAX_ENTRIES):
        self.max_entries = max_entries
        self._entries: OrderedDict[tuple, KV] = OrderedDict()
        self.built = 0  # prefixes computed so far (tests and logs)

    def clear(self) -> None:
        self._entries.clear()

    def entries(self, prefixes: list[tuple[int, ...]], device: torch.device, build: Callable[[list[int]], KV],
                llm: torch.nn.Module) -> list[KV]:
        """The cached keys/values of each prefix (batch dimension 1), building the missing ones with ``build``."""
        autocast = torch.get_autocast_dtype(device.type) if torch.is_autocast_enabled(device.type) else None
        context = (str(device), autocast)
        missing = list(dict.fromkeys(p for p in prefixes if (context, p) not in self._entries))
        if _is_fsdp_sharded(llm):
            import torch.distributed as dist

            gathered: list = [None] * dist.get_world_size()
            dist.all_gather_object(gathered, missing)
            # Every rank builds the whole union, also prefixes it still holds: the LRU can have dropped different
            # entries on different ranks, and each build is a collective that all ranks must run in the same order.
            missing = sorted({p for rank in gathered for p in rank})
        for prefix in missing:
            self._entries[(context, prefix)] = build(list(prefix))
            self.built += 1
            if len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)
        out = []
        for prefix in prefixes:
            self._entries.move_to_end((context, prefix))
            out.append(self._entries[(context, prefix)])
        return out


def batch_prefix(entries: list[KV], lengths: list[int]) -> tuple[KV, torch.Tensor]:
    """One (B, heads, P_max, dim) tensor pair per layer from the rows' prefix entries, each left-padded with zeros to
    P_max, and the (B, P_max) mask of the real prefix positions. Rows sharing one prefix share its memory (expand)."""
    p_max = max(lengths)
    device = entries[0][0][0].device
    pad = p_max - torch.tensor(lengths, device=device)
    mask = torch.arange(p_max, device=device).view(1, -1) >= pad.view(-1, 1)
    if all(e is entries[0] for e in entries):
        return [(k.expand(len(entries), -1, -1, -1), v.expand(len(entries), -1, -1, -1)) for k, v in entries[0]], mask
    out = []
    for layer in range(len(entries[0])):
        k0, v0 = entries[0][layer]
        keys = k0.new_zeros(len(entries), k0.shape[1], p_max, k0.shape[3])
        values = v0.new_zeros(len(entries), v0.shape[1], p_max, v0.shape[3])
        for i, (entry, n) in enumerate(zip(entries, lengths)):
            keys[i, :, p_max - n:] = entry[layer][0][0]
            values[i, :, p_max - n:] = entry[layer][1][0]
        out.append((keys, values))
    return out, mask
