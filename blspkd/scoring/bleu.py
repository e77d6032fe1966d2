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
