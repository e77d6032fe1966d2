"""Reading Kaldi-style ``<utt-id> <text>`` reference and hypothesis files for scoring, and pairing their keys.

The data-dir reader (blspkd.data.kaldi_dir.read_kv) rejects empty values; scoring needs them (a model may legitimately
output nothing) and needs line numbers to point at an empty reference, so it reads the files itself.
"""
from __future__ import annotations

import logging
from pathlib import Path

log = logging.getLogger(__name__)


class ScoringError(ValueError):
    """Bad scoring input that the user can fix; the message names the file (and line) and the fix."""


def read_text_file(path: str | Path, role: str) -> dict[str, str]:
    """``{utt_id: text}`` in file order. ``role`` is "reference" (empty text is an error) or "hypothesis" (allowed)."""
    path = Path(path)
    if not path.is_file():
        raise ScoringError(f"{role} file not found: {path}")
    texts: dict[str, str] = {}
    first_line: dict[str, int] = {}
    with path.open("rb") as f:
        for lineno, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8").rstrip("\r\n")
            except UnicodeDecodeError as e:
                raise ScoringError(f"{path}:{lineno}: not valid UTF-8 ({e.reason}); re-encode it as UTF-8") from None
            parts = line.strip().split(maxsplit=1)
            if not parts:
                raise ScoringError(f"{path}:{lineno}: blank line; every line must be '<utt-id> <text>' (delete it)")
            key, text = parts[0], (parts[1].strip() if len(parts) > 1 else "")
            if key in texts:
                raise ScoringError(
                    f"{path}:{lineno}: duplicate utterance id '{key}' (first at line {first_line[key]}); "
                    "keep one line per utterance"
                )
            if not text and role == "reference":
                raise ScoringError(
                    f"{path}:{lineno}: empty reference for utterance '{key}'; give it a transcript or drop the "
                    "utterance from the data dir (an empty reference has no defined error rate)"
                )
            texts[key] = text
            first_line[key] = lineno
    if not texts:
        raise ScoringError(f"{path}: the {role} file is empty")
    return texts


def _preview(keys: list[str], n: int = 5) -> str:
    shown = ", ".join(keys[:n])
    return shown + (f", ... ({len(keys) - n} more)" if len(keys) > n else "")


def pair_keys(
    refs: dict[str, str], hyps: dict[str, str], ref_path: str | Path, hyp_path: str | Path, allow_missing: bool
) -> tuple[list[str], int, int]:
    """Keys to score (sorted), the count of reference keys without hypothesis and of hypothesis keys without reference.

    Different key sets are an error unless ``allow_missing``, in which case the intersection is scored and logged.
    """
    missing = sorted(set(refs) - set(hyps))
    extra = sorted(set(hyps) - set(refs))
    common = sorted(set(refs) & set(hyps))
    if (missing or extra) and not allow_missing:
        problems = []
        if missing:
            problems.append(f"{len(missing)} reference keys have no hypothesis in {hyp_path}: {_preview(missing)}")
        if extra:
            problems.append(f"{len(extra)} hypothesis keys are not in the reference {ref_path}: {_preview(extra)}")
        raise ScoringError(
            "keys differ: " + "; ".join(problems) + f". Re-run decoding for the missing ones, or pass --allow_missing "
            f"to score only the {len(common)} common utterances."
        )
    if not common:
        raise ScoringError(f"no utterance id is shared by {ref_path} and {hyp_path}; are they from the same set?")
    if missing or extra:
        log.warning(
            "--allow_missing: scoring %d common utterances; %d reference keys without hypothesis, "
            "%d hypothesis keys without reference were left out",
            len(common), len(missing), len(extra),
        )
    return common, len(missing), len(extra)
