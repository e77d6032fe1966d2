"""Text normalisers applied to references and hypotheses before WER/CER (never before BLEU/chrF).

* ``whisper_en`` (default for English): transformers' ``EnglishTextNormalizer`` (the normaliser of the Whisper
  paper): lower-case, drop bracketed/parenthesised spans and fillers (hmm, uh, um), expand contractions and titles
  ("won't" -> "will not", "mr" -> "mister"), write numbers as digits ("twenty five" -> "25"), British -> American
  spelling, remove punctuation and symbols. The spelling mapping (1739 entries) is not shipped by transformers itself
  (it reads a Whisper checkpoint's ``normalizer.json``); we bundle the identical ``english.json`` of the MIT-licensed
  openai-whisper package as ``english_spelling.json`` (licence in ``english_spelling.LICENSE``) so scoring works
  offline whatever the model.
* ``basic`` (default for every other language): Unicode NFKC, lower-case, every punctuation character (Unicode
  category P*) replaced by a space, whitespace collapsed. Combining marks are kept: Whisper's ``BasicTextNormalizer``
  replaces them by spaces, which breaks words apart in Indic scripts.
* ``none``: whitespace collapsed only (for scoring exactly what was written).
"""
from __future__ import annotations

import json
import re
import unicodedata
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path

SPELLING_FILE = Path(__file__).with_name("english_spelling.json")
NORMALIZERS = ("auto", "whisper_en", "basic", "none")


def primary_language(lang: str) -> str:
    """'en-US' / 'zh_CN' / 'EN' -> 'en' / 'zh' / 'en' (the ISO 639 part that decides normaliser and tokeniser)."""
    return re.split(r"[-_]", lang.strip().lower(), maxsplit=1)[0]


@lru_cache(maxsize=1)
def english_spelling_mapping() -> dict[str, str]:
    return json.loads(SPELLING_FILE.read_text(encoding="utf-8"))


def _collapse(text: str) -> str:
    return " ".join(text.split())


def basic_normalize(text: str) -> str:
    text = unicodedata.normalize("NFKC", text).lower()
    text = "".join(" " if unicodedata.category(ch).startswith("P") else ch for ch in text)
    return _collapse(text)


@lru_cache(maxsize=1)
def _whisper_english() -> Callable[[str], str]:
    from transformers.models.whisper.english_normalizer import EnglishTextNormalizer

    return EnglishTextNormalizer(english_spelling_mapping())


def whisper_english_normalize(text: str) -> str:
    # the transformers normaliser leaves leading/trailing spaces behind
    return _collapse(_whisper_english()(text))


def resolve_normalizer(name: str, lang: str) -> str:
    """The concrete normaliser name for ``name`` (``auto`` picks by language)."""
    if name not in NORMALIZERS:
        raise ValueError(f"unknown normalizer '{name}'; choose one of {', '.join(NORMALIZERS)}")
    if name == "auto":
        return "whisper_en" if primary_language(lang) == "en" else "basic"
    return name


def get_normalizer(name: str, lang: str) -> Callable[[str], str]:
    resolved = resolve_normalizer(name, lang)
    return {"whisper_en": whisper_english_normalize, "basic": basic_normalize, "none": _collapse}[resolved]


def describe_normalizer(name: str, lang: str) -> str:
    """One line for result files saying exactly which normaliser ran (with versions where they matter)."""
    resolved = resolve_normalizer(name, lang)
    if resolved == "whisper_en":
        import transformers

        return (
            f"whisper_en (transformers {transformers.__version__} EnglishTextNormalizer + bundled openai-whisper "
            f"english.json, {len(english_spelling_mapping())} spellings)"
        )
    if resolved == "basic":
        return "basic (NFKC, lower-case, Unicode punctuation -> space, whitespace collapsed)"
    return "none (whitespace collapsed)"
