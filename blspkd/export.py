"""Export (recipe stage 8): a self-contained Hugging Face style directory that ``BlspKdModel.from_pretrained`` and
``python -m blspkd.bin.infer`` load, anywhere, without the experiment directory.

Layout of the export:

    config.json              BlspKdConfig; speech_encoder/llm point at base/... (copy_base) or absolute paths
    model.safetensors        the trained weights (adapter, PLoRA, an unfrozen encoder), exactly as trained
    tokenizer*, chat template, preprocessor_config.json   the LLM tokenizer and the Whisper feature-extractor settings
    base/speech_encoder/, base/llm/   copies of the base models (copy_base true)
    export_info.json         where it came from: source model dir, sha256 of the weights and config, base model paths
    README.md                model card: what the model is, how to run it, the RESULTS table when there is one

With ``copy_base false`` the export stays small but is tied to the base model directories on this machine (their
absolute paths are recorded). A relative base path in config.json is resolved against the model directory first
(``blspkd/models/modeling_blspkd.py``), which is what makes the copied layout relocatable.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import time
from pathlib import Path

from blspkd.data.kaldi_dir import read_utf8
from blspkd.decode import resolve_model_dir
from blspkd.scoring.scorer import package_versions, sha256_file

logger = logging.getLogger(__name__)

BASE_DIRS = {"speech_encoder": "base/speech_encoder", "llm": "base/llm"}


class ExportError(RuntimeError):
    """The export cannot be written; the message names the file and the fix."""


def resolve_base(path: str, model_dir: Path) -> Path:
    """A base model path of a model config, found the way the model finds it (model dir first, then the cwd)."""
    for candidate in (model_dir / path, Path(path)) if not os.path.isabs(path) else (Path(path),):
        if candidate.is_dir():
            return candidate.resolve()
    raise ExportError(f"{model_dir}/config.json names the base model '{path}', which is not a directory here "
                      f"(looked in {model_dir} and {Path.cwd()}); run the export from the directory training ran in "
                      "(the recipe dir), or fix the path in config.json")


def results_section(results_md: Path) -> str | None:
    """The results table of a RESULTS.md written by stage 7 (its "## Results" section)."""
    text = read_utf8(results_md)
    if "## Results" not in text:
        return None
    section = text.split("## Results", 1)[1].split("\n## ", 1)[0]
    return section.strip() or None


def model_card(config: dict, info: dict, results: str | None) -> str:
    adapter = config.get("adapter", {})
    plora = config.get("plora")
    lines = [
        "---",
        "library_name: blspkd",
        "tags: [speech, speech-llm, blsp-kd, knowledge-distillation, cif]",
        "---",
        "",
        "# BLSP-KD speech-language model",
        "",
        "A Whisper encoder and a CIF adapter (CFormer) that turn speech into as many vectors as the LLM would use "
        "tokens for the transcript, trained by knowledge distillation from the same frozen LLM reading the "
        "transcript (BLSP-KD, arXiv 2405.19041)" + (", with Partial LoRA on the LLM's speech positions." if plora
                                                      else "."),
        "",
        "## Use",
        "",
        "```bash",
        "python -m blspkd.bin.infer --model THIS_DIR --audio speech.wav",
        'python -m blspkd.bin.infer --model THIS_DIR --audio a.flac b.mp3 --instruction "Continue the following text '
        'in a coherent style: "',
        "python -m blspkd.bin.serve --model THIS_DIR   # a web page and an OpenAI-compatible endpoint, 127.0.0.1:8000",
        "```",
        "",
        "```python",
        "from blspkd import SpeechLLM",
        "m = SpeechLLM.from_pretrained('THIS_DIR')",
        "m.generate('speech.wav', instruction='Repeat the following sentence exactly.')",
        "```",
        "",
        "## Model",
        "",
        f"- speech encoder: `{info['base_models']['speech_encoder']['source']}`"
        f"{' (copied to base/speech_encoder)' if info['copy_base'] else ' (referenced, not copied)'}",
        f"- LLM: `{info['base_models']['llm']['source']}`"
        f"{' (copied to base/llm)' if info['copy_base'] else ' (referenced, not copied)'}",
        f"- adapter: {adapter.get('num_pre_cif_layers')} pre-CIF + {adapter.get('num_post_cif_layers')} post-CIF "
        f"layers, frame pooling {adapter.get('frame_pooling')}, CIF threshold {adapter.get('threshold')}",
        f"- PLoRA: {json.dumps(plora) if plora else 'off'}",
        f"- training losses: {json.dumps({k: w for k, w in config['losses'].items() if w is not None})}, KD "
        f"temperature {config.get('temperature')}",
        f"- default instruction: {config.get('default_instruction')!r}, system prompt: {config.get('system_prompt')!r}",
        f"- trained weights: model.safetensors, sha256 `{info['weights_sha256']}`",
        f"- exported from `{info['source_model_dir']}` on {info['created']}",
        "",
        "## Results",
        "",
        results or "No RESULTS.md was given to the export (stage 7 writes one).",
        "",
        "## Limits",
        "",
        "Whisper's encoder covers at most 30 s of audio per input; split longer recordings.",
        "",
    ]
    return "\n".join(lines)


def export_model(model_dir: str | Path, out_dir: str | Path, copy_base: bool = True,
                 results_md: str | Path | None = None) -> Path:
    """Write the export of ``model_dir`` (a model dir or an exp dir with model/) to ``out_dir`` (replaced)."""
    src = resolve_model_dir(model_dir)
    out = Path(out_dir)
    if out.resolve() == src.resolve() or src.resolve() in out.resolve().parents:
        raise ExportError(f"export directory {out} must not be the model directory {src} or inside it")
    config = json.loads((src / "config.json").read_text(encoding="utf-8"))
    bases = {name: resolve_base(config.get(name) or "", src) for name in BASE_DIRS}
    results = None  # read before anything is written: a bad RESULTS.md leaves no partial export
    if results_md is not None:
        if Path(results_md).is_file():
            results = results_section(Path(results_md))
        else:
            logger.warning("%s not found; the model card has no results table (run stage 7 first)", results_md)
    tmp = out.with_name(out.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    t0 = time.time()
    try:
        _write_export(src, tmp, config, bases, copy_base, results)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)  # no half-written export is left behind
        raise
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    logger.info("exported %s to %s (%s base models, %.1f MB, %.1f s)", src, out,
                "with copies of the" if copy_base else "referencing the", size / 1e6, time.time() - t0)
    return out


def _write_export(src: Path, tmp: Path, config: dict, bases: dict[str, Path], copy_base: bool,
                  results: str | None) -> None:
    # A model dir saved by save_pretrained is flat; an export being re-exported also has base/ (handled below).
    shutil.copytree(src, tmp, ignore=shutil.ignore_patterns("base", "README.md", "export_info.json", ".*"))
    info = {
        "source_model_dir": str(src.resolve()),
        "weights_sha256": sha256_file(src / "model.safetensors"),
        "source_config_sha256": sha256_file(src / "config.json"),
        "copy_base": copy_base,
        "base_models": {},
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "versions": package_versions(["blspkd", "torch", "transformers", "peft"]),
    }
    for name, path in bases.items():
        if copy_base:
            shutil.copytree(path, tmp / BASE_DIRS[name], ignore=shutil.ignore_patterns(".*"))
            config[name] = BASE_DIRS[name]
        else:
            config[name] = str(path)
        info["base_models"][name] = {"source": str(path), "in_config": config[name]}
    (tmp / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    (tmp / "export_info.json").write_text(json.dumps(info, indent=1) + "\n", encoding="utf-8")
    (tmp / "README.md").write_text(model_card(config, info, results), encoding="utf-8")
