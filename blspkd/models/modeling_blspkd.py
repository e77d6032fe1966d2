"""``BlspKdModel``: Whisper encoder -> CFormer (CIF) -> LLM, trained by distillation from the same LLM reading text.

Training forward (doc/method.md §4-5), with teacher and student sharing one token layout (N = transcript token count):

    teacher: no_grad, adapters off:  h_T = LLM([prefix | transcript | suffix | response])
    student: PLoRA on speech rows:   h_S = LLM([prefix | speech tokens | suffix | response])
    input_kl    = KL(softmax(z_T/T) || softmax(z_S/T)) on transcript rows      (z = lm_head(h) of those rows only)
    response_kl = the same on the rows that predict response tokens
    response_ce = CE(z_S, next token) on those rows
    cif         = mean_b |sum_t alpha_t / N - 1|
    cif_ce      = warm start: CIF vector k vs the frozen input embeddings (``blspkd.losses.embedding_ce``)
    loss        = sum_name weight_name * loss_name

Full-vocabulary logits are built only for the rows a loss uses: the backbone's hidden states are gathered first, then
the output head runs on those rows (R x V instead of B x L x V), once per row set: the student's transcript rows only
for input_kl, its response rows once for response_kl and response_ce together.

With ``config.cache_prefix`` (the default) both passes and ``generate`` run the LLM only over what follows the chat
prefix, whose keys/values are computed once per process (blspkd/models/prefix_cache.py); ``cache_prefix: false`` is
the plain path. ``encoder_out``/``encoder_out_lengths`` instead of ``feats``/``feats_lengths``: outputs of the frozen
speech encoder read from a stage-2 cache (blspkd/data/encoder_cache.py), the adapter runs on them directly.
"""
from __future__ import annotations

import contextlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from transformers import StoppingCriteria

from blspkd.data.prompts import ChatFraming
from blspkd.losses import cif_quantity_loss, embedding_ce, kd_kl
from blspkd.models.cif import CFormer
from blspkd.models.configuration_blspkd import BlspKdConfig
from blspkd.models.prefix_cache import (
    KV,
    PrefixKVStore,
    ReadOnlyPrefixCache,
    batch_prefix,
    constant_prefix_reason,
    generation_cache,
)
from blspkd.models.speech_encoder import WhisperSpeechEncoder
from blspkd.utils.config import ConfigError, check_fields, to_dict, update_from_dict

logger = logging.getLogger(__name__)

WEIGHTS_NAME = "model.safetensors"
LLM_LOSSES = ("input_kl", "response_kl", "response_ce")


class _RowLengthCap(StoppingCriteria):
    """Stops row ``i`` once it has ``caps[i]`` new tokens (``generate`` with ``inputs_embeds`` only: ``input_ids``
    holds just the generated tokens; beam search passes ``batch x beams`` rows, batch-major)."""

    def __init__(self, caps: torch.Tensor):
        super().__init__()
        self.caps = caps

    def __call__(self, input_ids: torch.Tensor, scores, **kwargs) -> torch.BoolTensor:
        caps = self.caps.to(input_ids.device).repeat_interleave(input_ids.shape[0] // self.caps.shape[0])
        return input_ids.shape[1] >= caps


@dataclass
class _LlmView:
    """The columns one backbone forward runs over and how (B, L) masks of the collated layout map onto them."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor  # (B, past + columns)
    position_ids: torch.Tensor
    prefix_kv: KV | None  # None: no prefix cache, the columns are the whole sequence
    index: torch.Tensor | None = None  # (B, columns): collated column of each view column
    valid: torch.Tensor | None = None  # (B, columns) bool: real (not padding) view columns

    def take(self, mask: torch.Tensor) -> torch.Tensor:
        """A (B, L) bool mask of the collated layout in this view's columns (row-major order is kept)."""
        return mask if self.index is None else mask.gather(1, self.index) & self.valid


def _resolve(path: str, base_dir: str | None) -> str:
    """A relative base-model path inside a saved model directory (an export) wins over the working directory."""
    if base_dir and path and not os.path.isabs(path) and (Path(base_dir) / path).exists():
        return str(Path(base_dir) / path)
    return path


class BlspKdModel(nn.Module):
    config_class = BlspKdConfig

    def __init__(self, config: BlspKdConfig, base_dir: str | None = None):
        super().__init__()
        from transformers import AutoModelForCausalLM, AutoTokenizer, WhisperFeatureExtractor

        if not config.speech_encoder or not config.llm:
            raise ValueError("BlspKdConfig needs both speech_encoder and llm (local model directories)")
        self.config = config
        encoder_dir = _resolve(config.speech_encoder, base_dir)
        llm_dir = _resolve(config.llm, base_dir)
        self.speech_encoder = WhisperSpeechEncoder(encoder_dir, config.freeze_speech_encoder, config.pad_to_30s)
        self.feature_extractor = WhisperFeatureExtractor.from_pretrained(encoder_dir)
        tok_dir = base_dir if base_dir and (Path(base_dir) / "tokenizer_config.json").exists() else llm_dir
        self.tokenizer = AutoTokenizer.from_pretrained(tok_dir, trust_remote_code=False)
        llm = AutoModelForCausalLM.from_pretrained(llm_dir, dtype=getattr(torch, config.llm_dtype),
                                                   trust_remote_code=False)
        llm.requires_grad_(False)
        if config.plora is not None:
            from blspkd.models.plora import apply_plora

            llm = apply_plora(llm, to_dict(config.plora))
        self.llm = llm
        self.framing = ChatFraming(self.tokenizer, config.system_prompt, config.instruction_separator)
        self.adapter = CFormer(input_dim=self.speech_encoder.output_dim, llm_dim=self._causal_lm().config.hidden_size,
                               **to_dict(config.adapter))
        self.prefix_store = PrefixKVStore()
        self._prefix_off_logged: str | None = None
        self._unit_embeddings: tuple[tuple, torch.Tensor] | None = None

    def train(self, mode: bool = True) -> BlspKdModel:
        """Training mode for what trains: the adapter, PLoRA's dropout, an unfrozen encoder. The frozen LLM stays in
        eval mode (its dropout off: the teacher is the deterministic base LLM and the student reads the same layers);
        a decoder layer under gradient checkpointing keeps its own training flag, which is what makes transformers
        checkpoint it, while its submodules stay in eval mode."""
        super().train(mode)
        self.llm.eval()
        for module in self.llm.modules():
            if hasattr(module, "lora_dropout"):  # peft LoRA layers (PLoRA)
                module.lora_dropout.train(mode)
            if getattr(module, "gradient_checkpointing", False) is True:
                module.training = mode
        return self

    # ---- pieces of the LLM -------------------------------------------------------------------------------------
    def _unit_embedding(self, embedding: torch.Tensor) -> torch.Tensor | None:
        """The frozen input-embedding matrix with unit rows, normalised once (cif_ce); None when it trains. Keyed by
        the tensor's storage, version counter, dtype and device, so a loaded or moved matrix is normalised again."""
        if embedding.requires_grad:
            return None
        key = (embedding.data_ptr(), embedding._version, embedding.dtype, embedding.device)
        if self._unit_embeddings is None or self._unit_embeddings[0] != key:
            self._unit_embeddings = (key, torch.nn.functional.normalize(embedding.detach().float(), dim=-1))
        return self._unit_embeddings[1]

    def _causal_lm(self):
        return self.llm.get_base_model() if hasattr(self.llm, "get_base_model") else self.llm

    @property
    def backbone(self) -> nn.Module:
        return self._causal_lm().get_decoder()

    @property
    def lm_head(self) -> nn.Module:
        return self._causal_lm().get_output_embeddings()

    def gradient_checkpointing_enable(self) -> None:
        """Activation checkpointing of the LLM's decoder layers (most of the activation memory of training). With PLoRA
        the recomputed layers get the token mask of their own forward (see blspkd/models/plora.py), so gradients are
        those of training without checkpointing."""
        if self.config.plora is not None:
            from blspkd.models.plora import enable_gradient_checkpointing

            enable_gradient_checkpointing(self.llm)
        else:
            self._causal_lm().activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        self.train(self.training)  # the checkpointed layers' own training flags (see ``train``)

    def _plora(self, mask: torch.Tensor | None):
        if self.config.plora is None:
            return contextlib.nullcontext()
        from blspkd.models.plora import plora_mask

        return plora_mask(self.llm, mask)

    def _teacher_context(self):
        """The teacher is exactly the original LLM: no gradient, and the PLoRA mask None, under which every PLoRA layer
        is its base layer. (peft's ``disable_adapter()`` is not needed, and harmful: on exit it sets requires_grad=True
        on every LoRA weight.)"""
        stack = contextlib.ExitStack()
        stack.enter_context(torch.no_grad())
        stack.enter_context(self._plora(None))
        return stack

    # ---- parameters and state -------------------------------------------------------------------------------------
    def trainable_named_parameters(self) -> list[tuple[str, nn.Parameter]]:
        return [(n, p) for n, p in self.named_parameters() if p.requires_grad]

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        return {n: p.detach().clone() for n, p in self.trainable_named_parameters()}

    def load_trainable_state_dict(self, state_dict: dict[str, torch.Tensor], strict: bool = True) -> list[str]:
        """Load weights saved by ``trainable_state_dict``. Unknown names or wrong shapes are errors; with ``strict``,
        so is a trainable parameter missing from ``state_dict``. Returns the missing trainable names."""
        params = dict(self.named_parameters())
        unexpected = sorted(set(state_dict) - set(params))
        if unexpected:
            raise KeyError(f"weights not in this model: {unexpected[:5]}{' ...' if len(unexpected) > 5 else ''} "
                           "(saved by a model with a different adapter/PLoRA configuration?)")
        missing = sorted(n for n, _ in self.trainable_named_parameters() if n not in state_dict)
        if strict and missing:
            raise KeyError(f"trainable weights missing from the state dict: {missing[:5]}")
        with torch.no_grad():
            for name, value in state_dict.items():
                if params[name].shape != value.shape:
                    raise ValueError(f"{name}: saved shape {tuple(value.shape)} != model shape "
                                     f"{tuple(params[name].shape)}")
                params[name].copy_(value)
        return missing

    def save_pretrained(self, out_dir: str | os.PathLike, state_dict: dict[str, torch.Tensor] | None = None) -> None:
        """config.json + model.safetensors (trainable weights only) + tokenizer and feature-extractor files.
        ``state_dict``: the trainable weights to write instead of this module's (FSDP training gathers its shards)."""
        from safetensors.torch import save_file

        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        self.config.save_pretrained(out_dir)
        state_dict = self.trainable_state_dict() if state_dict is None else state_dict
        state = {n: t.contiguous() for n, t in state_dict.items()}
        save_file(state, str(out_dir / WEIGHTS_NAME), metadata={"format": "pt"})
        self.tokenizer.save_pretrained(out_dir)
        self.feature_extractor.save_pretrained(out_dir)

    @classmethod
    def from_pretrained(cls, model_dir: str | os.PathLike, **config_overrides) -> BlspKdModel:
        """Rebuild from ``save_pretrained`` output; ``config_overrides`` (e.g. ``llm=...``) replace config fields."""
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        model_dir = str(model_dir)
        weights = Path(model_dir) / WEIGHTS_NAME
        if not weights.exists():
            raise FileNotFoundError(f"{weights} not found: not a directory written by BlspKdModel.save_pretrained")
        config = BlspKdConfig.from_pretrained(model_dir)
        update_from_dict(config, config_overrides, "from_pretrained")
        check_fields(config, "from_pretrained")
        try:  # before the base models load: a damaged file is refused in a moment
            state = load_file(str(weights))
        except SafetensorError as e:
            raise OSError(f"{weights}: not a readable safetensors file ({e}); the model directory is damaged: re-run "
                          "the training (or export) that wrote it") from None
        model = cls(config, base_dir=model_dir)
        missing = model.load_trainable_state_dict(state, strict=False)
        if missing:
            logger.info("%d trainable tensors not in %s keep their fresh values (e.g. newly enabled PLoRA): %s",
                        len(missing), weights, missing[:3])
        return model

    # ---- fixed-prefix KV cache (blspkd/models/prefix_cache.py) ----------------------------------------------------
    def _prefix_cache_on(self) -> bool:
        if not getattr(self.config, "cache_prefix", True):
            return False
        reason = constant_prefix_reason(self._causal_lm(), self._causal_lm().training)
        if reason is not None and reason != self._prefix_off_logged:
            logger.warning("cache_prefix: off (%s); every forward recomputes the prefix", reason)
        self._prefix_off_logged = reason
        return reason is None

    def _build_prefix(self, ids: list[int]) -> KV:
        """The base LLM alone on one prefix (no gradient, adapters off): its keys/values at every layer."""
        device = self.llm.get_input_embeddings().weight.device
        with self._teacher_context():
            out = self.backbone(input_ids=torch.tensor([ids], device=device), use_cache=True,
                                position_ids=torch.arange(len(ids), device=device).view(1, -1))
        return [(layer.keys, layer.values) for layer in out.cache.layers]

    def _prefix_kv(self, prefixes: list[tuple[int, ...]]) -> tuple[KV, torch.Tensor]:
        device = self.llm.get_input_embeddings().weight.device
        entries = self.prefix_store.entries(prefixes, device, self._build_prefix, self._causal_lm())
        return batch_prefix(entries, [len(p) for p in prefixes])

    def _llm_view(self, input_ids, attention_mask, transcript_mask) -> _LlmView:
        """The whole collated sequence, or with the prefix cache the columns after each row's prefix (the prefix is
        everything before the row's first transcript/speech position)."""
        prefix_len = transcript_mask.int().argmax(1)
        if not self._prefix_cache_on() or not bool((prefix_len > 0).all()):
            return _LlmView(input_ids, attention_mask, self.position_ids(attention_mask), None)
        lengths = attention_mask.sum(1)
        rest = lengths - prefix_len
        columns = torch.arange(int(rest.max()), device=input_ids.device).view(1, -1)
        index = (prefix_len.view(-1, 1) + columns).clamp(max=input_ids.shape[1] - 1)
        valid = columns < rest.view(-1, 1)
        rows = input_ids.tolist()
        kv, prefix_mask = self._prefix_kv([tuple(r[:n]) for r, n in zip(rows, prefix_len.tolist())])
        mask = torch.cat([prefix_mask, valid], 1).to(attention_mask.dtype)
        return _LlmView(input_ids.gather(1, index), mask, prefix_len.view(-1, 1) + columns, kv, index, valid)

    @contextlib.contextmanager
    def _checkpoint_with_read_only_cache(self):
        """Gradient-checkpointed layers drop a cache (a writing cache would grow twice when a layer is replayed);
        ours is read-only, so the replay reads the same prefix: keep it for these forwards."""
        layers = list(self.backbone.layers)
        for layer in layers:
            layer._can_checkpoint_with_cache = True
        try:
            yield
        finally:
            for layer in layers:
                del layer._can_checkpoint_with_cache

    def _view_hidden(self, embeds, view: _LlmView, rows: list[torch.Tensor]) -> list[torch.Tensor]:
        if view.prefix_kv is None:
            return self._rows_hidden(embeds, view.attention_mask, rows)
        with self._checkpoint_with_read_only_cache():
            hidden = self.backbone(inputs_embeds=embeds, attention_mask=view.attention_mask,
                                   position_ids=view.position_ids, cache=ReadOnlyPrefixCache(view.prefix_kv),
                                   use_cache=False).last_hidden_state
        return [hidden[r] for r in rows]

    # ---- training forward -----------------------------------------------------------------------------------------
    def encode_speech(self, feats: torch.Tensor, feats_lengths: torch.Tensor, num_tokens: torch.Tensor | None = None):
        hidden, mask = self.speech_encoder(feats, feats_lengths)
        return self.adapter(hidden, mask, num_tokens)

    def adapt_encoder_outputs(self, encoder_out: torch.Tensor, lengths: torch.Tensor,
                              num_tokens: torch.Tensor | None = None):
        """The adapter on cached outputs of the frozen speech encoder (B, T', d) with their lengths (B,)."""
        mask = torch.arange(encoder_out.shape[1], device=encoder_out.device).view(1, -1) < lengths.view(-1, 1)
        dtype = next(self.adapter.parameters()).dtype
        return self.adapter(encoder_out.to(dtype) * mask.unsqueeze(-1), mask, num_tokens)

    def _speech(self, feats, feats_lengths, encoder_out, encoder_out_lengths, num_tokens=None):
        if encoder_out is not None:
            return self.adapt_encoder_outputs(encoder_out, encoder_out_lengths, num_tokens)
        if feats is None:
            raise ValueError("BlspKdModel: give feats + feats_lengths (log-mel) or encoder_out + encoder_out_lengths")
        return self.encode_speech(feats, feats_lengths, num_tokens)

    @staticmethod
    def position_ids(attention_mask: torch.Tensor) -> torch.Tensor:
        """Positions follow the attention mask, so any padding layout gives the positions of the unpadded sequence."""
        return (attention_mask.long().cumsum(1) - 1).clamp(min=0)

    def _rows_hidden(self, embeds, attention_mask, rows: list[torch.Tensor]) -> list[torch.Tensor]:
        hidden = self.backbone(inputs_embeds=embeds, attention_mask=attention_mask,
                               position_ids=self.position_ids(attention_mask), use_cache=False).last_hidden_state
        return [hidden[r] for r in rows]

    def teacher_hidden(self, input_ids, attention_mask, rows: list[torch.Tensor]) -> list[torch.Tensor]:
        """The original LLM reading the text (no gradient, PLoRA off): final hidden states of the selected rows
        (each a (B, L) bool mask), in row-major order. ``lm_head`` of them gives the teacher logits."""
        with self._teacher_context():
            return self._rows_hidden(self.llm.get_input_embeddings()(input_ids), attention_mask, rows)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        transcript_mask: torch.Tensor,
        response_mask: torch.Tensor,
        num_tokens: torch.Tensor,
        feats: torch.Tensor | None = None,
        feats_lengths: torch.Tensor | None = None,
        encoder_out: torch.Tensor | None = None,
        encoder_out_lengths: torch.Tensor | None = None,
    ) -> dict:
        weights = self.config.losses.enabled()
        speech = self._speech(feats, feats_lengths, encoder_out, encoder_out_lengths, num_tokens)
        out: dict = {}
        frames, frame_lengths = (feats, feats_lengths) if encoder_out is None else (encoder_out, encoder_out_lengths)
        stats = {"num_tokens": float(num_tokens.sum()), "batch_size": float(len(num_tokens)),
                 "cif_ratio": float((speech.alpha_sum.detach() / num_tokens).mean()),
                 "pad_frames": 1.0 - float(frame_lengths.sum()) / (frames.shape[0] * frames.shape[1])}
        if "cif" in weights:
            out["cif"] = cif_quantity_loss(speech.alpha_sum, num_tokens)
        if "cif_ce" in weights:
            embedding = self.llm.get_input_embeddings().weight
            out["cif_ce"], stats["cif_acc"] = embedding_ce(speech.embeds[speech.mask], input_ids[transcript_mask],
                                                           embedding, self.config.cif_ce_temperature,
                                                           self._unit_embedding(embedding))
            stats["cif_acc"] = float(stats["cif_acc"])
        if any(name in weights for name in LLM_LOSSES):
            out.update(self._llm_losses(speech, input_ids, attention_mask, transcript_mask, response_mask, stats))
        loss = sum(weights[name] * out[name] for name in weights)
        for name in weights:
            stats[name] = float(out[name].detach())
        out["loss"] = loss
        out["stats"] = stats
        return out

    def _llm_losses(self, speech, input_ids, attention_mask, transcript_mask, response_mask, stats) -> dict:
        weights = self.config.losses.enabled()
        # row i predicts token i+1: response rows are the positions just before each response token
        response_rows = torch.zeros_like(response_mask)
        response_rows[:, :-1] = response_mask[:, 1:]
        labels = torch.zeros_like(input_ids)
        labels[:, :-1] = input_ids[:, 1:]
        view = self._llm_view(input_ids, attention_mask, transcript_mask)
        transcript, response = view.take(transcript_mask), view.take(response_rows)
        pad = view.attention_mask[:, view.attention_mask.shape[1] - view.input_ids.shape[1]:]
        stats["llm_positions"] = float(pad.numel())  # query positions of each LLM pass, padding included
        stats["pad_tokens"] = 1.0 - float(pad.sum()) / pad.numel()  # their padded fraction
        text_embeds = self.llm.get_input_embeddings()(view.input_ids)
        student_embeds = text_embeds.clone()
        student_embeds[transcript] = speech.embeds[speech.mask].to(text_embeds.dtype)
        lm_head = self.lm_head
        use_in, use_resp = "input_kl" in weights, "response_kl" in weights or "response_ce" in weights
        rows = [r for r, used in ((transcript, use_in), (response, use_resp)) if used]
        with self._plora(transcript):
            hidden = self._view_hidden(student_embeds, view, rows)
        s_in = hidden.pop(0) if use_in else None
        s_resp_logits = lm_head(hidden.pop(0)) if use_resp else None  # once, for response_kl and response_ce
        out = {}
        teacher_rows = [r for r, used in ((transcript, use_in), (response, "response_kl" in weights)) if used]
        if teacher_rows:
            with self._teacher_context():
                teacher = self._view_hidden(text_embeds, view, teacher_rows)
                t_logits = [lm_head(h) for h in teacher]
        if use_in:
            s_in_logits, t_in_logits = lm_head(s_in), t_logits.pop(0)
            stats["agreement"] = float((t_in_logits.argmax(-1) == s_in_logits.detach().argmax(-1)).float().mean())
            out["input_kl"] = kd_kl(s_in_logits, t_in_logits, self.config.temperature)
        if "response_kl" in weights:
            out["response_kl"] = kd_kl(s_resp_logits, t_logits.pop(0), self.config.temperature)
        if "response_ce" in weights:
            if s_resp_logits.shape[0] == 0:  # no item of this batch has a response
                out["response_ce"] = s_resp_logits.float().sum() * 0.0
            else:
                targets = labels[response_rows]
                out["response_ce"] = nn.functional.cross_entropy(s_resp_logits.float(), targets)
                stats["response_acc"] = float((s_resp_logits.detach().argmax(-1) == targets).float().mean())
        stats["response_tokens"] = float(response_rows.sum())
        return out

    # ---- generation ----------------------------------------------------------------------------------------------
    @torch.no_grad()
    def generate(self, feats: torch.Tensor | None, feats_lengths: torch.Tensor | None,
                 instructions: list[str | None] | None = None, return_details: bool = False,
                 encoder_out: torch.Tensor | None = None, encoder_out_lengths: torch.Tensor | None = None,
                 max_len_ratio: float = 0.0, max_len_offset: int = 0, **generate_kwargs) -> list[str] | dict:
        """Speech (+ optional instruction per utterance) -> text. CIF predicts each utterance's speech-token count;
        prompts are left-padded and run through transformers' ``generate`` with ``inputs_embeds`` and a KV cache;
        PLoRA applies to the speech positions of the prompt only; with ``cache_prefix`` the cache starts as the
        prefixes' keys/values (blspkd/models/prefix_cache.py) and only ``[speech | suffix]`` is prefilled.
        ``encoder_out``/``encoder_out_lengths`` replace the log-mel input by cached encoder outputs.
        ``generate_kwargs`` go to ``generate``
        (``max_new_tokens`` defaults to 128; greedy unless ``num_beams``/``do_sample`` say otherwise; a ``streamer``
        receives the new tokens as they come).
        ``max_len_ratio`` > 0 caps each utterance at ``ceil(max_len_ratio * N_hat + max_len_offset)`` new tokens
        (N_hat: its CIF speech-token count, an estimate of the transcript's token count), as ESPnet's maxlenratio
        caps by encoder length: an answer that restates the speech cannot loop on for the whole ``max_new_tokens``.
        ``return_details=True`` (used by blspkd/decode.py for its per-utterance records and speed figures) returns
        ``{"texts", "num_speech_tokens", "num_generated_tokens"}`` (generated tokens up to and including the first
        end-of-turn/EOS token) instead of the list of texts."""
        batch = self.build_generation_inputs(feats, feats_lengths, instructions, encoder_out, encoder_out_lengths)
        tok = self.tokenizer
        eos = list(dict.fromkeys([*self.framing.end_of_turn_ids[:1],
                                  *([tok.eos_token_id] if tok.eos_token_id is not None else [])]))
        pad = tok.pad_token_id if tok.pad_token_id is not None else eos[0]
        kwargs = {"max_new_tokens": 128, "do_sample": False, "eos_token_id": eos, "pad_token_id": pad,
                  **generate_kwargs}
        context = getattr(self._causal_lm().config, "max_position_embeddings", None)
        prompt = batch["inputs_embeds"].shape[1]
        if context and prompt + kwargs["max_new_tokens"] > context:  # else generation may run for hours, then fail
            raise ConfigError(f"max_new_tokens {kwargs['max_new_tokens']} + the {prompt}-position prompt exceed the "
                              f"LLM's context of {context} positions; lower max_new_tokens")
        if max_len_ratio > 0:
            caps = torch.ceil(max_len_ratio * batch["num_tokens"].float() + max_len_offset).clamp(min=1).long()
            kwargs["stopping_criteria"] = [*kwargs.get("stopping_criteria", []), _RowLengthCap(caps)]
        plora_mask = batch["speech_mask"]
        if "prefix_kv" in batch:
            config = kwargs.get("generation_config", self.llm.generation_config)
            expand = max(kwargs.get("num_beams", config.num_beams) or 1,
                         kwargs.get("num_return_sequences", config.num_return_sequences) or 1)
            kwargs["cache"] = generation_cache(batch["prefix_kv"], expand)  # generate expands every tensor input
            plora_mask = plora_mask[:, batch["prefix_kv"][0][0].shape[2]:]  # the prefill forward's columns
        with self._plora(plora_mask):
            tokens = self.llm.generate(inputs_embeds=batch["inputs_embeds"], attention_mask=batch["attention_mask"],
                                       **kwargs)
        texts = [t.strip() for t in tok.batch_decode(tokens, skip_special_tokens=True)]
        if not return_details:
            return texts
        is_end = torch.isin(tokens, torch.tensor(eos, device=tokens.device))
        length = torch.full((tokens.shape[0],), tokens.shape[1], device=tokens.device)
        first_end = torch.where(is_end.any(1), is_end.int().argmax(1) + 1, length)
        if max_len_ratio > 0:  # a row stopped by its cap is padded with pad = EOS after it: not a token it generated
            first_end = torch.minimum(first_end, caps.to(first_end.device))
        return {"texts": texts, "num_speech_tokens": [int(n) for n in batch["num_tokens"]],
                "num_generated_tokens": [int(n) for n in first_end]}

    def build_generation_inputs(self, feats, feats_lengths, instructions=None, encoder_out=None,
                                encoder_out_lengths=None) -> dict[str, torch.Tensor]:
        """Left-padded prompt embeddings ``[prefix | instruction | speech | suffix]`` with the attention and speech
        masks (B, L). With the prefix cache, the prefixes (instruction included) are a left-padded slot of P columns
        whose embeddings are never read, then ``[speech | suffix]`` left-padded, and ``prefix_kv`` holds the prefixes'
        keys/values (what ``generate`` starts its cache with)."""
        speech = self._speech(feats, feats_lengths, encoder_out, encoder_out_lengths)
        b = speech.embeds.shape[0]
        if instructions is None:
            instructions = [None] * b
        if len(instructions) != b:
            raise ValueError(f"generate: {len(instructions)} instructions for a batch of {b}")
        embed = self.llm.get_input_embeddings()
        device = embed.weight.device
        parts = []
        for i, instruction in enumerate(instructions):
            prefix = self.framing.prefix_ids(instruction or self.config.default_instruction)
            n = int(speech.num_tokens[i])
            parts.append((torch.tensor(prefix, device=device), speech.embeds[i, :n],
                          torch.tensor(self.framing.suffix_ids, device=device)))
        cached = self._prefix_cache_on()
        slot = max(len(p) for p, _, _ in parts) if cached else 0
        length = slot + max(len(s) + len(x) + (0 if cached else len(p)) for p, s, x in parts)
        embeds = torch.zeros(b, length, embed.weight.shape[1], dtype=embed.weight.dtype, device=device)
        attention_mask = torch.zeros(b, length, dtype=torch.long, device=device)
        speech_mask = torch.zeros(b, length, dtype=torch.bool, device=device)
        for i, (prefix, sp, suffix) in enumerate(parts):
            head = [] if cached else [embed(prefix)]
            row = torch.cat([*head, sp.to(embeds.dtype), embed(suffix)])
            start = length - row.shape[0]
            embeds[i, start:] = row
            attention_mask[i, start:] = 1
            first = start + (0 if cached else len(prefix))
            speech_mask[i, first: first + sp.shape[0]] = True
        out = {"inputs_embeds": embeds, "attention_mask": attention_mask, "speech_mask": speech_mask,
               "num_tokens": speech.num_tokens}
        if cached:
            out["prefix_kv"], prefix_mask = self._prefix_kv([tuple(p.tolist()) for p, _, _ in parts])
            attention_mask[:, :slot] = prefix_mask
        return out
