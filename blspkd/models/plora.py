"""Partial LoRA (PLoRA): LoRA whose update is switched on per token (doc/method.md §6).

    y_t = W x_t + m_t * (B A dropout(x_t)) * alpha / r

with m_t = 1 on speech-token positions and 0 elsewhere. Consequences (all tested in test/test_plora.py):

* no mask set, or a mask of zeros: the model is exactly the base LLM (the LoRA branch is not even computed);
* the LoRA branch is computed on the rows with m_t != 0 only (speech positions), never on text rows;
* in a causal LM every position before the first masked position is exactly the base LLM's;
* a mask of ones is ordinary LoRA with the same weights;
* PLoRA cannot be merged into W (the update depends on the token), so the adapter is always saved on its own.

Built on stock peft: ``PLoraLinear`` subclasses peft's ``lora.Linear`` and is registered with peft's custom-module
mechanism, so ``get_peft_model``/``save_pretrained`` write the usual ``adapter_model.safetensors`` +
``adapter_config.json``; ``load_plora`` reads them back (a plain ``PeftModel.from_pretrained`` would give ordinary
LoRA, applied to every token).

How the mask reaches the layers. ``plora_mask(model, mask)`` stores a (B, L) mask whose columns are the positions of the
*next* forward with sequence length L (the "anchor" forward); a forward pre-hook on the LLM's decoder backbone computes,
for each forward, the mask of the positions that forward processes and hands it to every PLoRA layer:

* positions are absolute: ``past = cache.get_seq_length()``; the anchor fixes ``offset = past`` at that time;
  a forward over positions [past, past + L') uses mask columns [past - offset, past - offset + L'), zero outside;
* so in ``generate`` with a KV cache, the prefill (the anchor) gets the mask and decode steps get zeros (generated
  tokens are text); without a cache every step re-reads the prompt, gets the same mask padded with zeros: both agree;
* a batch that generate expanded (beam search, num_return_sequences) gets the mask repeated the same way;
* ``plora_mask(model, None)`` switches PLoRA off inside an outer mask context (the teacher pass, which must be exactly
  the original LLM; peft's ``disable_adapter()`` would give the same outputs but sets requires_grad=True on every LoRA
  weight when it exits).

Gradient checkpointing recomputes the decoder layers during ``backward()``, usually after the ``plora_mask`` context
has exited (or while another forward's mask is set). Enable it with ``enable_gradient_checkpointing(peft_model)``: the
checkpoint's ``context_fn`` (torch.utils.checkpoint, non-reentrant) captures the mask each checkpointed layer saw in its
forward and re-installs exactly that mask while the layer is recomputed, so the gradients equal those without
checkpointing. Checkpointing enabled any other way is refused with an error at the first masked training forward
(recomputed layers would silently read the wrong mask).
"""
from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator
from typing import Any

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from peft.tuners.lora import layer as lora_layer
from torch import nn
from transformers.pytorch_utils import Conv1D

from blspkd.models.configuration_blspkd import PLoraConfig

# The reference defaults (BLSP2), as the model config states them: r=16, alpha=16, dropout 0.05, "all-linear".
DEFAULT_PLORA = dataclasses.asdict(PLoraConfig())


@dataclasses.dataclass(frozen=True)
class _ActiveRows:
    """The positions of one forward where m_t != 0, found once for all its PLoRA layers.

    The LoRA branch runs on these rows only: on the others its update is multiplied by zero, so computing it there (the
    text rows of a prompt, the answer) would only cost matmuls and dropout masks."""

    shape: tuple[int, int]  # (B', L') of the forward
    rows: torch.Tensor  # indices into its flattened B' * L' positions
    weights: torch.Tensor  # (len(rows), 1): m_t of those rows

    @classmethod
    def from_mask(cls, active: torch.Tensor) -> _ActiveRows | None:
        flat = active.reshape(-1)
        rows = flat.nonzero().squeeze(1)
        return cls(tuple(active.shape), rows, flat[rows].unsqueeze(1)) if rows.numel() else None


@dataclasses.dataclass
class _PLoraState:
    """Mask shared by all PLoRA layers of one model (one object per model, referenced by each layer)."""

    mask: torch.Tensor | None = None  # (B, L) as given to plora_mask; None = PLoRA off
    offset: int | None = None  # absolute position of mask column 0, fixed by the anchor forward
    active: _ActiveRows | None = None  # the masked positions of the forward being run; None = no LoRA in this forward
    lengths_seen: list[int] = dataclasses.field(default_factory=list)  # to report a mask that matched no forward


class PLoraLinear(lora_layer.Linear):
    """peft's LoRA ``Linear`` with the update multiplied by the per-token mask of the current forward."""

    plora_state: _PLoraState | None = None

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        state = self.plora_state
        active = None if state is None else state.active
        if self.disable_adapters or active is None:
            return self.base_layer(x, *args, **kwargs)
        if kwargs.get("adapter_names") is not None:
            raise TypeError("PLoRA does not support peft's mixed-adapter batches (adapter_names=...)")
        if x.dim() != 3 or tuple(x.shape[:2]) != active.shape:
            raise RuntimeError(
                f"PLoRA: layer input of shape {tuple(x.shape)} does not match the token mask {active.shape}; "
                "PLoRA layers must see (batch, sequence, features) inputs of the model's forward"
            )
        result = self.base_layer(x, *args, **kwargs)
        result_dtype = result.dtype
        x_rows = x.reshape(-1, x.shape[-1]).index_select(0, active.rows)
        m = active.weights.to(result_dtype)
        update = None
        for name in self.active_adapters:
            if name not in self.lora_A:
                continue
            lora_A, lora_B = self.lora_A[name], self.lora_B[name]
            h = self._cast_input_dtype(x_rows, lora_A.weight.dtype)
            # Same operation order as peft's vanilla LoRA, times m: a mask of ones reproduces LoRA.
            delta = (lora_B(lora_A(self.lora_dropout[name](h))) * self.scaling[name]) * m
            update = delta if update is None else update + delta
        if update is None:
            return result
        flat = result.reshape(-1, result.shape[-1]).index_add(0, active.rows, update.to(result_dtype))
        return flat.view(result.shape)

    def merge(self, safe_merge: bool = False, adapter_names: list[str] | None = None) -> None:
        raise RuntimeError("PLoRA cannot be merged into the base weights: its update depends on the token mask")

    def __repr__(self) -> str:
        return "p" + super().__repr__()


def _plora_conv1d(target: nn.Module, adapter_name: str, config: LoraConfig, **kwargs: Any) -> PLoraLinear:
    """GPT-2 style ``Conv1D`` projections (weights stored transposed), as peft's default dispatcher handles them."""
    config.fan_in_fan_out = True
    return PLoraLinear(target, adapter_name, config=config, is_target_conv_1d_layer=True, **kwargs)


def make_plora_config(lora_config: LoraConfig | PLoraConfig | dict | None = None) -> LoraConfig:
    """A peft ``LoraConfig`` for PLoRA: reference defaults, updated by a dict or a model config's ``PLoraConfig``, or a
    given LoraConfig (copied)."""
    if isinstance(lora_config, PLoraConfig):
        lora_config = dataclasses.asdict(lora_config)
    if isinstance(lora_config, LoraConfig):
        config = LoraConfig(**{f.name: getattr(lora_config, f.name) for f in dataclasses.fields(LoraConfig) if f.init})
    else:
        values = {**DEFAULT_PLORA, **(lora_config or {})}
        config = LoraConfig(task_type="CAUSAL_LM", bias="none", **values)
    if config.use_dora or config.bias != "none":
        raise ValueError("PLoRA supports plain LoRA only (use_dora=False, bias='none')")
    config._register_custom_module({nn.Linear: PLoraLinear, Conv1D: _plora_conv1d})
    return config


def _attach(peft_model: PeftModel) -> PeftModel:
    """Give every PLoRA layer the model's shared state and install the pre-hook that computes each forward's mask."""
    layers = [m for m in peft_model.modules() if isinstance(m, lora_layer.LoraLayer)]
    plain = [type(m).__name__ for m in layers if not isinstance(m, PLoraLinear)]
    if plain:
        raise TypeError(f"PLoRA: these target modules got ordinary LoRA layers, not PLoRA: {sorted(set(plain))}")
    if not layers:
        raise ValueError("PLoRA: no layer matched target_modules")
    state = _PLoraState()
    for m in layers:
        m.plora_state = state
    _mask_hook_target(peft_model.get_base_model()).register_forward_pre_hook(
        lambda module, args, kwargs: _select_mask(state, module, args, kwargs), with_kwargs=True
    )
    return peft_model


def _mask_hook_target(base: nn.Module) -> nn.Module:
    """The decoder backbone (``LlamaModel`` inside ``LlamaForCausalLM``): every forward passes through it, both the
    causal LM's (training, generate) and direct backbone calls that skip the full-vocabulary head."""
    get_decoder = getattr(base, "get_decoder", None)
    decoder = get_decoder() if callable(get_decoder) else None
    return decoder if isinstance(decoder, nn.Module) else base


def apply_plora(model: nn.Module, lora_config: LoraConfig | dict | None = None) -> PeftModel:
    """Wrap a Hugging Face causal LM with fresh PLoRA adapters (B = 0, so it starts as the base model).

    ``lora_config``: a peft ``LoraConfig``, a dict of its arguments (over the reference defaults r=16, alpha=16,
    dropout=0.05, all attention and MLP projections) or None. Only the adapter weights are trainable. Save with
    ``peft_model.save_pretrained(dir)``; load with ``load_plora``.
    """
    return _attach(get_peft_model(model, make_plora_config(lora_config)))


def load_plora(model: nn.Module, adapter_dir: str, is_trainable: bool = False) -> PeftModel:
    """Load PLoRA adapters saved by ``save_pretrained`` (adapter_config.json + adapter_model.safetensors)."""
    config = make_plora_config(LoraConfig.from_pretrained(adapter_dir))
    config.inference_mode = not is_trainable
    return _attach(PeftModel.from_pretrained(model, adapter_dir, config=config, is_trainable=is_trainable))


def _find_state(model: nn.Module) -> _PLoraState:
    for m in model.modules():
        if isinstance(m, PLoraLinear) and m.plora_state is not None:
            return m.plora_state
    raise ValueError("plora_mask: the model has no PLoRA layers (build it with blspkd.models.plora.apply_plora)")


def _past_length(kwargs: dict) -> int:
    cache = kwargs.get("cache", kwargs.get("past_key_values"))
    if cache is None or not hasattr(cache, "get_seq_length"):
        return 0
    return int(cache.get_seq_length())


def _select_mask(state: _PLoraState, backbone: nn.Module, args: tuple, kwargs: dict) -> None:
    """Forward pre-hook: set ``state.active`` to the mask of the positions this forward processes (or None)."""
    _select_active(state, args, kwargs)
    if state.active is not None and torch.is_grad_enabled():  # (BlspKdModel trains with the LLM in eval mode)
        _check_checkpointing(state, backbone)


def _select_active(state: _PLoraState, args: tuple, kwargs: dict) -> None:
    state.active = None
    if state.mask is None:
        return
    inputs = kwargs.get("input_ids")
    if inputs is None:
        inputs = args[0] if args else kwargs.get("inputs_embeds")
    if inputs is None:
        return
    batch, length = inputs.shape[0], inputs.shape[1]
    past = _past_length(kwargs)
    mask = state.mask
    if state.offset is None:
        if length != mask.shape[1]:
            state.lengths_seen.append(length)
            return  # not the anchor forward yet (e.g. a prefix being cached): no LoRA
        state.offset = past
    start = past - state.offset
    lo, hi = max(start, 0), min(start + length, mask.shape[1])
    if hi <= lo:
        return  # decode steps after the anchor: generated tokens are text
    if batch != mask.shape[0]:
        if batch % mask.shape[0]:
            raise RuntimeError(f"PLoRA: forward batch {batch} is not a multiple of the mask batch {mask.shape[0]}")
        mask = mask.repeat_interleave(batch // mask.shape[0], dim=0)  # as generate expands beams/return sequences
    active = mask.new_zeros(batch, length)
    active[:, lo - start : hi - start] = mask[:, lo:hi]
    state.active = _ActiveRows.from_mask(active.to(inputs.device))


@contextlib.contextmanager
def plora_mask(model: nn.Module, mask: torch.Tensor | None) -> Iterator[None]:
    """Run the forwards inside with the PLoRA token mask ``mask`` (B, L) (float or bool; None switches PLoRA off).

    ``model`` is the PeftModel from ``apply_plora``/``load_plora`` or any module containing it. See the module docstring
    for how the mask maps onto forwards (anchor forward, KV cache, generate).
    """
    state = _find_state(model)
    if mask is not None:
        if mask.dim() != 2:
            raise ValueError(f"plora_mask: the mask must be (batch, length), got shape {tuple(mask.shape)}")
        mask = mask.detach().float()
    saved = (state.mask, state.offset, state.active, state.lengths_seen)  # restored on exit, so contexts nest
    state.mask, state.offset, state.active, state.lengths_seen = mask, None, None, []
    try:
        yield
        if mask is not None and state.offset is None and state.lengths_seen:
            # Silently training or decoding without the adapters would be worse than stopping here.
            raise ValueError(
                f"plora_mask: the mask has {mask.shape[1]} columns but no forward inside the context had that "
                f"sequence length (lengths seen: {state.lengths_seen}); the mask needs one column per input position "
                "of the forward it belongs to"
            )
    finally:
        state.mask, state.offset, state.active, state.lengths_seen = saved


class _RecomputeWithMask:
    """``context_fn`` of torch.utils.checkpoint (non-reentrant). Called when a checkpointed layer runs its forward, it
    captures the PLoRA mask of that forward; its second context manager re-installs that mask while the layer is
    recomputed during backward (whatever mask, if any, is set by then)."""

    def __init__(self, state: _PLoraState):
        self.state = state

    def __call__(self) -> tuple[contextlib.AbstractContextManager, contextlib.AbstractContextManager]:
        return contextlib.nullcontext(), _active_mask(self.state, self.state.active)


@contextlib.contextmanager
def _active_mask(state: _PLoraState, active: _ActiveRows | None) -> Iterator[None]:
    saved = state.active
    state.active = active
    try:
        yield
    finally:
        state.active = saved


def checkpoint_kwargs(model: nn.Module) -> dict:
    """``torch.utils.checkpoint`` arguments under which recomputed PLoRA layers see the mask of their own forward."""
    return {"use_reentrant": False, "context_fn": _RecomputeWithMask(_find_state(model))}


def enable_gradient_checkpointing(model: nn.Module, **kwargs: Any) -> None:
    """Activation checkpointing of a PLoRA model's decoder layers (``model``: the PeftModel from apply_plora/load_plora;
    ``kwargs``: more arguments of transformers' ``activation_checkpointing_enable``, e.g. ``every_n_layers``)."""
    base = model.get_base_model() if isinstance(model, PeftModel) else model
    base.activation_checkpointing_enable(activation_checkpointing_kwargs=checkpoint_kwargs(model), **kwargs)


def _check_checkpointing(state: _PLoraState, backbone: nn.Module) -> None:
    """Refuse checkpointed layers that would be recomputed without their mask (enabled without checkpoint_kwargs)."""
    for name, module in backbone.named_modules():
        if getattr(module, "gradient_checkpointing", False) is not True:
            continue
        context_fn = getattr(getattr(module, "_gradient_checkpointing_func", None), "keywords", {}).get("context_fn")
        if not (isinstance(context_fn, _RecomputeWithMask) and context_fn.state is state):
            raise RuntimeError(
                f"PLoRA: gradient checkpointing of {name or type(module).__name__} was enabled without PLoRA's "
                "recompute context, so its recomputation in backward would not see the token mask (wrong LoRA "
                "gradients); enable it with blspkd.models.plora.enable_gradient_checkpointing(model) (or pass "
                "checkpoint_kwargs(model) as activation_checkpointing_kwargs)"
            )
