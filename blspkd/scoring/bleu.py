"""BLEU and chrF with sacrebleu on raw (detokenised, un-normalised) text, and the behaviour-alignment measure.

    BLEU = BP * exp( (1/4) * sum_{n=1..4} log p_n ),   BP = min(1, exp(1 - r/c))

p_n is the clipped n-gram precision over the corpus, r the reference length and c the hypothesis length in tokens of the
chosen tokeniser. chrF = F_beta (beta=2) of character n-gram (n <= 6) precision and recall, averaged over n.
The tokeniser is chosen by the target language: zh -> 'zh'; ja -> 'ja-mecab' when sacrebleu's Japanese extras
(mecab-python3, ipadic) are installed, else 'char'; ko -> 'ko-mecab' or 'char'; scripts written without spaces
(th, lo, km, my) -> 'char'; everything else -> '13a' (sacrebleu's default). The sacrebleu signature records the choice.

Behaviour alignment (BLSP): for continuation/instruction tasks, BLEU (and chrF) of the responses generated from speech
against the responses the same LLM generated from the transcript text; 100 means the speech input made the LLM behave
exactly as the text did.

Its floor: the same chrF against other utterances' references (``align_chrf_mismatched``), the mean over shifts
``s`` of the reference list, hypothesis i scored against reference (i + s) mod n:

    floor = (1/|S|) * sum_{s in S} chrF(hyps, refs shifted by s),   S = up to 8 shifts spread evenly over 1..n-1

What an answer of the right form and language earns without the speech's content (a French-looking answer to any
sentence shares character n-grams with any French reference); the alignment above that floor is what the content
adds. Deterministic (no random shuffle), and needs at least 2 utterances.
"""
from __future__ import annotations

import logging
from functools import cache

from sacrebleu.metrics import BLEU, CHRF

from .normalize import primary_language

log = logging.getLogger(__name__)

_MECAB_TOKENIZERS = {"ja": "ja-mecab", "ko": "ko-mecab"}
_CHAR_LANGS = {"th", "lo", "km", "my"}
_ZH_LANGS = {"zh", "cmn", "yue"}


@cache
def tokenizer_available(name: str) -> bool:
    """Whether sacrebleu can build tokeniser ``name`` here (the MeCab ones need optional packages)."""
    try:
        BLEU(tokenize=name)
    except RuntimeError:
        return False
    return True


def tokenizer_for_language(lang: str) -> str:
    lang = primary_language(lang)
    if lang in _ZH_LANGS:
        return "zh"
    if lang in _MECAB_TOKENIZERS:
        name = _MECAB_TOKENIZERS[lang]
        if tokenizer_available(name):
            return name
        log.warning("sacrebleu tokeniser %s is not installed (pip install 'sacrebleu[%s]'); using 'char'", name, lang)
        return "char"
    if lang in _CHAR_LANGS:
        return "char"
    return "13a"


def corpus_bleu(hyps: list[str], refs: list[str], tokenize: str) -> dict:
    metric = BLEU(tokenize=tokenize)
    s = metric.corpus_score(hyps, [refs])
    return {
        "score": round(s.score, 4),
        "precisions": [round(p, 4) for p in s.precisions],
        "counts": list(s.counts),
        "totals": list(s.totals),
        "brevity_penalty": round(s.bp, 6),
        "hyp_len": s.sys_len,
        "ref_len": s.ref_len,
        "num_utts": len(hyps),
        "signature": str(metric.get_signature()),
        "text": str(s),
    }


def corpus_chrf(hyps: list[str], refs: list[str]) -> dict:
    metric = CHRF()
    s = metric.corpus_score(hyps, [refs])
    return {
        "score": round(s.score, 4),
        "num_utts": len(hyps),
        "signature": str(metric.get_signature()),
        "text": str(s),
    }


MISMATCHED_SHIFTS = 8


def corpus_chrf_mismatched(hyps: list[str], refs: list[str]) -> dict | None:
    """chrF of the hypotheses against other utterances' references, averaged over shifts (the module docstring);
    None for fewer than 2 utterances."""
    n = len(hyps)
    if n < 2:
        return None
    k = min(MISMATCHED_SHIFTS, n - 1)
    shifts = [1 + (i * (n - 1)) // k for i in range(k)]  # distinct, in 1..n-1
    metric = CHRF()
    scores = [metric.corpus_score(hyps, [refs[s:] + refs[:s]]).score for s in shifts]
    mean = sum(scores) / len(scores)
    return {"score": round(mean, 4), "num_utts": n, "shifts": shifts, "signature": str(metric.get_signature()),
            "text": f"chrF2 = {mean:.2f} (mean over {len(shifts)} shifts of the references)"}


def sentence_scores(keys: list[str], hyps: list[str], refs: list[str], tokenize: str) -> list[dict]:
    """Per-utterance sentence BLEU (effective order) and chrF, worst first: the list to read for error analysis."""
    bleu = BLEU(tokenize=tokenize, effective_order=True)
    chrf = CHRF()
    rows = [
        {
            "key": k,
            "bleu": round(bleu.sentence_score(h, [r]).score, 2),
            "chrf": round(chrf.sentence_score(h, [r]).score, 2),
            "ref": r,
            "hyp": h,
        }
        for k, h, r in zip(keys, hyps, refs)
    ]
    return sorted(rows, key=lambda row: (row["chrf"], row["bleu"], row["key"]))
