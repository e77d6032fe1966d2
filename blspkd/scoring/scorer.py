"""Score one hypothesis file against one reference file with the requested metrics (the library behind bin/score.py).

Metrics: ``wer`` and ``cer`` (jiwer, after the normaliser of normalize.py), ``bleu`` and ``chrf`` (sacrebleu, raw text),
``align`` (behaviour alignment: BLEU and chrF of speech-input responses against the teacher's text-input responses, so
the reference is the teacher response file, e.g. dump/<set>/continuation; with it, the chrF against other utterances'
references, its content-free floor: blspkd/scoring/bleu.py), ``exact`` (the percentage of utterances
whose hypothesis equals the reference after the WER normaliser: an answer that says the same thing in the same
words), ``all`` = wer, cer, bleu, chrf.
"""
from __future__ import annotations

import hashlib
import logging
import platform
import time
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from .bleu import corpus_bleu, corpus_chrf, corpus_chrf_mismatched, sentence_scores, tokenizer_for_language
from .normalize import describe_normalizer, get_normalizer, resolve_normalizer
from .text_files import ScoringError, pair_keys, read_text_file
from .wer import ErrorRate, error_rate

log = logging.getLogger(__name__)

METRICS = ("wer", "cer", "bleu", "chrf", "align", "exact")
# Every package a score can depend on (jiwer's alignment, sacrebleu's BLEU/chrF, transformers' English normaliser):
# result.json records those a run used, and the recipe's stage 7 re-scores when any of their versions changes.
SCORING_PACKAGES = ("jiwer", "sacrebleu", "transformers")
RESULT_FORMAT = "blspkd-score-1"


def parse_metrics(spec: str) -> list[str]:
    """'all' / 'wer,cer' / 'align' -> ordered unique metric names; unknown names are an error."""
    names: list[str] = []
    for part in spec.replace(" ", "").split(","):
        expanded = ["wer", "cer", "bleu", "chrf"] if part == "all" else [part]
        for name in expanded:
            if name not in METRICS:
                raise ScoringError(f"unknown metric '{name}'; choose from {', '.join(METRICS)}, all (comma-separated)")
            if name not in names:
                names.append(name)
    return names


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def package_versions(names: list[str]) -> dict[str, str]:
    out = {}
    for name in names:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "not installed"
    return out


@dataclass
class ScoreResult:
    summary: dict  # what result.json holds
    error_rates: dict[str, ErrorRate] = field(default_factory=dict)  # "wer"/"cer" -> alignments
    sentences: dict[str, list[dict]] = field(default_factory=dict)  # "bleu"/"align" -> per-utterance scores
    refs: dict[str, str] = field(default_factory=dict)
    hyps: dict[str, str] = field(default_factory=dict)


def exact_match(keys: list[str], refs: dict[str, str], hyps: dict[str, str], normalize) -> tuple[dict, list[dict]]:
    """The exact-match rate (%) after ``normalize`` and the per-utterance records (mismatches first)."""
    rows = [{"key": k, "exact": normalize(refs[k]) == normalize(hyps[k]), "ref": normalize(refs[k]),
             "hyp": normalize(hyps[k])} for k in keys]
    n_exact = sum(r["exact"] for r in rows)
    summary = {"score": 100.0 * n_exact / max(len(keys), 1), "num_exact": n_exact, "num_utts": len(keys)}
    return summary, sorted(rows, key=lambda r: r["exact"])


def score_files(
    ref_path: str | Path,
    hyp_path: str | Path,
    metrics: list[str],
    lang: str = "en",
    normalizer: str = "auto",
    allow_missing: bool = False,
    command: str = "",
) -> ScoreResult:
    refs = read_text_file(ref_path, "reference")
    hyps = read_text_file(hyp_path, "hypothesis")
    keys, n_missing, n_extra = pair_keys(refs, hyps, ref_path, hyp_path, allow_missing)
    n_empty = sum(1 for k in keys if not hyps[k])
    if n_empty:
        log.info("%d of %d hypotheses are empty (scored as such)", n_empty, len(keys))
    start = time.time()
    result = ScoreResult(summary={}, refs=refs, hyps=hyps)
    scores: dict[str, dict] = {}
    ref_list, hyp_list = [refs[k] for k in keys], [hyps[k] for k in keys]
    tokenize = tokenizer_for_language(lang)
    normalize = get_normalizer(normalizer, lang)
    for name in metrics:
        if name in ("wer", "cer"):
            try:
                er = error_rate(keys, refs, hyps, normalize, unit="word" if name == "wer" else "char")
            except ValueError as e:
                raise ScoringError(f"{ref_path}: {e}") from None
            result.error_rates[name] = er
            scores[name] = er.summary()
        elif name == "bleu":
            scores["bleu"] = corpus_bleu(hyp_list, ref_list, tokenize)
        elif name == "chrf":
            scores["chrf"] = corpus_chrf(hyp_list, ref_list)
        elif name == "align":
            scores["align_bleu"] = corpus_bleu(hyp_list, ref_list, tokenize)
            scores["align_chrf"] = corpus_chrf(hyp_list, ref_list)
            mismatched = corpus_chrf_mismatched(hyp_list, ref_list)
            if mismatched is not None:
                scores["align_chrf_mismatched"] = mismatched
        elif name == "exact":
            scores["exact"], result.sentences["exact"] = exact_match(keys, refs, hyps, normalize)
        if name in ("bleu", "chrf", "align"):
            group = "align" if name == "align" else "bleu"
            if group not in result.sentences:
                result.sentences[group] = sentence_scores(keys, hyp_list, ref_list, tokenize)
    uses_normalizer = any(m in ("wer", "cer", "exact") for m in metrics)
    jiwer, sacrebleu, transformers = SCORING_PACKAGES
    scorers = [jiwer] * uses_normalizer + [sacrebleu] * any(m in ("bleu", "chrf", "align") for m in metrics)
    if uses_normalizer and resolve_normalizer(normalizer, lang) == "whisper_en":
        scorers.append(transformers)
    result.summary = {
        "format": RESULT_FORMAT,
        "ref": str(ref_path),
        "hyp": str(hyp_path),
        "ref_sha256": sha256_file(ref_path),
        "hyp_sha256": sha256_file(hyp_path),
        "lang": lang,
        "normalizer": describe_normalizer(normalizer, lang) if uses_normalizer else None,
        "bleu_tokenizer": tokenize if set(metrics) & {"bleu", "align"} else None,
        "num_ref_utts": len(refs),
        "num_hyp_utts": len(hyps),
        "num_scored": len(keys),
        "num_missing_hyp": n_missing,
        "num_extra_hyp": n_extra,
        "num_empty_hyp": n_empty,
        "metrics": scores,
        "versions": package_versions(["blspkd", *scorers]),
        "python": platform.python_version(),
        "command": command,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    log.info(
        "scored %d utterances (%s) in %.1f s: %s",
        len(keys), ", ".join(metrics), time.time() - start,
        ", ".join(f"{k}={v['score']:.2f}" for k, v in scores.items()),
    )
    return result
