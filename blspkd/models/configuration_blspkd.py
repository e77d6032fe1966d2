"""``BlspKdConfig``: what a BLSP-KD model is made of (saved as config.json next to the trained weights)."""
from __future__ import annotations

from transformers import PretrainedConfig

LOSS_NAMES = ("input_kl", "response_kl", "response_ce", "cif", "cif_ce")

DEFAULT_ADAPTER = {
    "d_model": None,  # None: the speech encoder's width (the reference CFormer works at the encoder width)
    "num_heads": 8,
    "ffn_dim": None,  # None: 4 * d_model
    "num_pre_cif_layers": 4,
    "num_post_cif_layers": 4,
    "pre_cif_dropout": 0.0,  # the alpha channel comes out of these layers: dropout there made alphas unlearnable
    "post_cif_dropout": 0.1,
    "frame_pooling": 1,  # 2 = average pairs of encoder frames before the adapter (method.md 7)
    "threshold": 1.0,
}


class BlspKdConfig(PretrainedConfig):
    """Configuration of the composite model.

    speech_encoder, llm: local Hugging Face directories (or hub ids where a hub is reachable) of a Whisper model and a
        chat causal LM; a relative path is resolved against the saved model directory first.
    freeze_speech_encoder, pad_to_30s: see ``WhisperSpeechEncoder``.
    adapter: CFormer sizes (keys of ``DEFAULT_ADAPTER``; missing keys take the defaults).
    plora: None = off, or a dict of peft LoraConfig arguments (over r=16, alpha=16, dropout=0.05, all-linear).
    losses: name -> weight among input_kl, response_kl, response_ce, cif, cif_ce.
    temperature: KD softmax temperature (2.0 as in the reference). cif_ce_temperature: cosine-logit temperature.
    system_prompt, default_instruction, instruction_separator: prompt framing (``blspkd.data.prompts.ChatFraming``).
    llm_dtype: dtype the LLM weights are loaded in ("float32", "bfloat16", "float16").
    """

    model_type = "blspkd"

    def __init__(
        self,
        speech_encoder: str | None = None,
        llm: str | None = None,
        freeze_speech_encoder: bool = True,
        pad_to_30s: bool = False,
        adapter: dict | None = None,
        plora: dict | None = None,
        losses: dict | None = None,
        temperature: float = 2.0,
        cif_ce_temperature: float = 0.1,
        system_prompt: str | None = None,
        default_instruction: str | None = None,
        instruction_separator: str = "\n",
        llm_dtype: str = "float32",
        **kwargs,
    ):
        adapter = dict(adapter or {})
        unknown = sorted(set(adapter) - set(DEFAULT_ADAPTER))
        if unknown:
            raise ValueError(f"BlspKdConfig.adapter: unknown keys {unknown}; valid keys: {sorted(DEFAULT_ADAPTER)}")
        losses = dict(losses if losses is not None else {"input_kl": 1.0, "cif": 1.0})
        bad = sorted(set(losses) - set(LOSS_NAMES))
        if bad:
            raise ValueError(f"BlspKdConfig.losses: unknown loss names {bad}; valid names: {list(LOSS_NAMES)}")
        if not losses:
            raise ValueError("BlspKdConfig.losses is empty; name at least one of " + ", ".join(LOSS_NAMES))
        if llm_dtype not in ("float32", "bfloat16", "float16"):
            raise ValueError(f"BlspKdConfig.llm_dtype must be float32, bfloat16 or float16, got {llm_dtype!r}")
        self.speech_encoder = speech_encoder
        self.llm = llm
        self.freeze_speech_encoder = freeze_speech_encoder
        self.pad_to_30s = pad_to_30s
        self.adapter = {**DEFAULT_ADAPTER, **adapter}
        self.plora = plora
        self.losses = {k: float(v) for k, v in losses.items()}
        self.temperature = temperature
        self.cif_ce_temperature = cif_ce_temperature
        self.system_prompt = system_prompt
        self.default_instruction = default_instruction
        self.instruction_separator = instruction_separator
        self.llm_dtype = llm_dtype
        super().__init__(**kwargs)

    def _get_generation_parameters(self) -> dict:
        # transformers refuses to save a config holding generation-like names; our ``temperature`` is the KD
        # temperature, not a sampling one, and this config never drives ``generate`` directly.
        return {}
