"""``BlspKdConfig``: what a BLSP-KD model is made of (saved as config.json next to the trained weights).

A composite configuration in the style of transformers' (``LlavaConfig`` with its ``sub_configs``): the top level
names the base models, the prompt framing and the KD settings; three typed sub-configs hold the CFormer adapter
(``CFormerConfig``), Partial LoRA (``PLoraConfig``) and the loss weights (``LossWeights``). The sub-configs are plain
dataclasses, not ``PretrainedConfig`` subclasses, so they carry no transformers fields (id2label, ...) and are not
registered as transformers sub-configs; config.json holds them as nested dicts. Every field is a key of the ``model``
section of a training config (``--print_config`` shows them all, ``--model.adapter.num_heads 4`` overrides one).
A dict given for a sub-config is checked key by key, so a typo is a ``ConfigError`` naming the closest real key;
adding a model key is one annotated line in one of these classes.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

from transformers import PretrainedConfig

from blspkd.utils.config import ConfigError, check_fields, field_names, to_dict, unknown_key_error


@dataclass
class CFormerConfig:
    """The CFormer adapter (``blspkd.models.cif.CFormer``): Whisper layers, CIF, Whisper layers, projection."""

    # Width of the adapter layers; null = the speech encoder's width (the reference CFormer works at that width).
    d_model: int | None = None
    num_heads: int = 8  # attention heads of every adapter layer
    ffn_dim: int | None = None  # feed-forward width of the adapter layers; null = 4 * d_model
    num_pre_cif_layers: int = 4  # layers between the encoder and CIF (their output gives the CIF weights)
    num_post_cif_layers: int = 4  # layers over the CIF token vectors
    # Dropout of the pre-CIF layers; the CIF weights come out of them and dropout there made them unlearnable.
    pre_cif_dropout: float = 0.0
    post_cif_dropout: float = 0.1  # dropout of the post-CIF layers and of the CIF output
    frame_pooling: int = 1  # average this many encoder frames before the adapter (doc/method.md §9)
    threshold: float = 1.0  # the CIF firing threshold beta


@dataclass
class PLoraConfig:
    """Partial LoRA on the LLM's speech positions (``blspkd.models.plora``): arguments of peft's ``LoraConfig``.
    The defaults are the reference's (BLSP2): r=16, alpha=16, dropout 0.05 on every attention and MLP projection
    ("all-linear" is peft's name for every linear layer of the decoder except the output head)."""

    r: int = 16  # LoRA rank
    lora_alpha: int = 16  # scaling numerator: the update is (lora_alpha / r) * B A x
    lora_dropout: float = 0.05  # dropout on the LoRA input (trains even though the LLM itself runs in eval mode)
    # The LLM linear layers that get PLoRA: "all-linear" (every decoder projection) or a list of module names.
    target_modules: str | list[str] = "all-linear"
    use_rslora: bool = False  # rank-stabilised scaling lora_alpha / sqrt(r)


@dataclass
class LossWeights:
    """Weight of each training loss; null = the loss is off (not computed). A mapping given for the whole section names
    every loss of the run: the losses it leaves out are off."""

    input_kl: float | None = None  # KL(teacher || student) on the transcript rows (doc/method.md §5.1)
    response_kl: float | None = None  # the same on the rows that predict response tokens
    response_ce: float | None = None  # cross-entropy of the student on the response tokens
    cif: float | None = None  # CIF quantity loss |sum alpha / N - 1|
    cif_ce: float | None = None  # warm start: CIF vectors against the LLM's input embeddings

    def enabled(self) -> dict[str, float]:
        """name -> weight of the losses that are on, in ``LOSS_NAMES`` order."""
        return {name: w for name in LOSS_NAMES if (w := getattr(self, name)) is not None}


LOSS_NAMES = tuple(f.name for f in dataclasses.fields(LossWeights))


def _default_losses() -> LossWeights:
    return LossWeights(input_kl=1.0, cif=1.0)


class BlspKdConfig(PretrainedConfig):
    """Configuration of the composite model (``BlspKdModel``).

    ``adapter``, ``plora`` and ``losses`` accept the sub-config objects or dicts of their keys; a dict for ``adapter``
    takes the defaults for the keys it leaves out, a dict for ``losses`` names every loss that is on, a dict for
    ``plora`` turns PLoRA on over the reference defaults (r=16, alpha=16, dropout 0.05, all linear layers).
    """

    model_type = "blspkd"
    # transformers' own fields (id2label, chunk_size_feed_forward, ...) are not keys of a training config's model
    # section
    config_skip_fields: ClassVar[tuple[type, ...]] = (PretrainedConfig,)

    # Local Hugging Face directory of the Whisper model; a relative path is resolved against a saved model dir first.
    speech_encoder: str | None = None
    llm: str | None = None  # local Hugging Face directory of the chat causal LM (relative: as speech_encoder)
    freeze_speech_encoder: bool = True  # a frozen encoder runs without autograd and in eval mode
    # Pad every utterance to 30 s before the encoder as the reference does (else the encoder reads the true length).
    pad_to_30s: bool = False
    adapter: CFormerConfig = field(default_factory=CFormerConfig)
    plora: PLoraConfig | None = field(default=None, metadata={"whole": True})  # null = no PLoRA (KD pretraining)
    losses: LossWeights = field(default_factory=_default_losses, metadata={"whole": True})
    temperature: float = 2.0  # KD softmax temperature of input_kl and response_kl (2.0 as in the reference)
    cif_ce_temperature: float = 0.1  # temperature of the cosine logits of cif_ce
    system_prompt: str | None = None  # system turn of the chat framing; null = the chat template's default
    # Instruction of an example that has none (decoding without --instruction, plain KD examples get none).
    default_instruction: str | None = None
    instruction_separator: str = "\n"  # text between the instruction and the speech in the user turn
    llm_dtype: Literal["float32", "bfloat16", "float16"] = "float32"  # dtype the LLM weights are loaded in
    # Compute the frozen LLM's keys/values of each chat prefix once and run the LLM only over what follows it
    # (blspkd/models/prefix_cache.py); off by itself, with the reason logged, where the prefix is not constant.
    cache_prefix: bool = True

    def __post_init__(self, **kwargs):
        where = "model config"
        own = set(field_names(type(self)))
        for key in kwargs:  # config.json bookkeeping and from_pretrained arguments; anything else is a typo
            if key not in own and not key.startswith("_") and key not in _TRANSFORMERS_KWARGS:
                raise unknown_key_error(key, own, where)
        check_fields(self, where)  # dicts become typed sub-configs, strictly; then check_config
        super().__post_init__(**kwargs)

    def check_config(self, where: str = "model config") -> None:
        """What the field types alone do not say; ``blspkd.utils.config`` calls it after applying every value."""
        if not self.losses.enabled():
            raise ConfigError(f"{where}: 'losses' is empty; give a weight to at least one of {', '.join(LOSS_NAMES)}")

    def to_dict(self) -> dict[str, Any]:
        return {**super().to_dict(), **to_dict(self)}  # the sub-configs as plain dicts

    def _get_generation_parameters(self) -> dict:
        # transformers refuses to save a config holding generation-like names; our ``temperature`` is the KD
        # temperature, not a sampling one, and this config never drives ``generate`` directly.
        return {}


# Keys transformers itself passes to a config's constructor (config.json bookkeeping, from_pretrained arguments).
_TRANSFORMERS_KWARGS = ("model_type", "transformers_version", "torch_dtype", "num_labels", "attn_implementation",
                        "experts_implementation", "output_attentions", "name_or_path")
