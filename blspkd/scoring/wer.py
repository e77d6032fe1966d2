"""Word and character error rates with jiwer, with per-utterance alignments for error analysis.

    WER = (S + D + I) / N,   N = S + D + H   (number of reference words)

S, D, I, H are the substitutions, deletions, insertions and hits of the minimum-edit-distance alignment of each
normalised hypothesis to its normalised reference, summed over the corpus (a corpus rate, not a mean of per-utterance
rates). CER is the same over characters; spaces between words count as characters (jiwer's convention), shown as '␣'
in alignments.
"""
from __future__ import annotations

import unicodedata
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import jiwer

SPACE_MARK = "␣"
OP_LETTERS = {"equal": " ", "substitute": "S", "delete": "D", "insert": "I"}


@dataclass
class UttErrors:
    key: str
    ref: str  # normalised reference
    hyp: str  # normalised hypothesis
    hits: int
    substitutions: int
    deletions: int
    insertions: int
    ops: list[tuple[str, str, str]]  # (op letter ' '/S/D/I, reference token or '', hypothesis token or '')

    @property
    def errors(self) -> int:
        return self.substitutions + self.deletions + self.insertions

    @property
    def num_ref(self) -> int:
        return self.hits + self.substitutions + self.deletions


@dataclass
class ErrorRate:
    unit: str  # "word" or "char"
    hits: int
    substitutions: int
    deletions: int
    insertions: int
    num_utts: int
    num_utts_with_errors: int
    utts: list[UttErrors] = field(repr=False)

    @property
    def num_ref(self) -> int:
        return self.hits + self.substitutions + self.deletions

    @property
    def errors(self) -> int:
        return self.substitutions + self.deletions + self.insertions

    @property
    def rate(self) -> float:
        return self.errors / self.num_ref

    def summary(self) -> dict:
        """The numbers that go into result.json (rates in percent, like the papers report them)."""
        return {
            "score": round(100.0 * self.rate, 4),
            "unit": self.unit,
            "num_ref": self.num_ref,
            "hits": self.hits,
            "substitutions": self.substitutions,
            "deletions": self.deletions,
            "insertions": self.insertions,
            "num_utts": self.num_utts,
            "num_utts_with_errors": self.num_utts_with_errors,
            "sentence_error_rate": round(100.0 * self.num_utts_with_errors / self.num_utts, 4),
        }


def error_rate(
    keys: list[str], refs: dict[str, str], hyps: dict[str, str], normalize: Callable[[str], str], unit: str = "word"
) -> ErrorRate:
    """Corpus WER (``unit="word"``) or CER (``unit="char"``) of ``hyps`` against ``refs`` over ``keys``."""
    if unit not in ("word", "char"):
        raise ValueError(f"unit must be 'word' or 'char', got {unit!r}")
    ref_norm = [normalize(refs[k]) for k in keys]
    hyp_norm = [normalize(hyps[k]) for k in keys]
    if not any(ref_norm):
        raise ValueError(
            "every reference is empty after normalisation, so the error rate is undefined; "
            "check the --lang/--normalizer choice"
        )
    process = jiwer.process_words if unit == "word" else jiwer.process_characters
    out = process(ref_norm, hyp_norm)
    utts = []
    for key, r, h, ref_toks, hyp_toks, chunks in zip(
        keys, ref_norm, hyp_norm, out.references, out.hypotheses, out.alignments
    ):
        ops: list[tuple[str, str, str]] = []
        counts = Counter()
        for c in chunks:
            rt, ht = ref_toks[c.ref_start_idx : c.ref_end_idx], hyp_toks[c.hyp_start_idx : c.hyp_end_idx]
            n = max(len(rt), len(ht))
            counts[c.type] += n
            for i in range(n):
                ops.append((OP_LETTERS[c.type], rt[i] if i < len(rt) else "", ht[i] if i < len(ht) else ""))
        utts.append(
            UttErrors(key, r, h, counts["equal"], counts["substitute"], counts["delete"], counts["insert"], ops)
        )
    return ErrorRate(
        unit=unit,
        hits=out.hits,
        substitutions=out.substitutions,
        deletions=out.deletions,
        insertions=out.insertions,
        num_utts=len(keys),
        num_utts_with_errors=sum(1 for u in utts if u.errors),
        utts=utts,
    )


def _width(token: str) -> int:
    return sum(2 if unicodedata.east_asian_width(ch) in "WF" else 1 for ch in token)


def _pad(token: str, width: int) -> str:
    return token + " " * (width - _width(token))


def format_alignment(utt: UttErrors, gap: str = "***") -> str:
    """sclite-style block: REF/HYP rows aligned column by column (``gap`` marks a gap) and an op row (S, D, I)."""
    ref_row, hyp_row, op_row = [], [], []
    for op, r, h in utt.ops:
        r = gap if op == "I" else r.replace(" ", SPACE_MARK)
        h = gap if op == "D" else h.replace(" ", SPACE_MARK)
        w = max(_width(r), _width(h), 1)
        ref_row.append(_pad(r, w))
        hyp_row.append(_pad(h, w))
        op_row.append(_pad(op, w))
    rate = f"{100.0 * utt.errors / utt.num_ref:.1f}%" if utt.num_ref else "n/a (empty reference)"
    return (
        f"{utt.key}  S={utt.substitutions} D={utt.deletions} I={utt.insertions} N={utt.num_ref} err={rate}\n"
        f"REF: {' '.join(ref_row).rstrip()}\nHYP: {' '.join(hyp_row).rstrip()}\nOPS: {' '.join(op_row).rstrip()}\n"
    )


def top_confusions(result: ErrorRate, n: int = 10) -> dict[str, list[tuple[str, int]]]:
    """Most frequent substitution pairs ('ref -> hyp'), deleted and inserted tokens, for result.txt."""
    subs, dels, ins = Counter(), Counter(), Counter()
    for utt in result.utts:
        for op, r, h in utt.ops:
            r, h = r.replace(" ", SPACE_MARK), h.replace(" ", SPACE_MARK)
            if op == "S":
                subs[f"{r} -> {h}"] += 1
            elif op == "D":
                dels[r] += 1
            elif op == "I":
                ins[h] += 1
    return {
        "substitutions": subs.most_common(n),
        "deletions": dels.most_common(n),
        "insertions": ins.most_common(n),
    }


def utt_record(utt: UttErrors, raw_ref: str, raw_hyp: str) -> dict:
    """One line of the per-utterance jsonl: raw and normalised texts, counts and the aligned ops."""
    rec = asdict(utt)
    rec["ops"] = [list(o) for o in utt.ops]
    rec.update(raw_ref=raw_ref, raw_hyp=raw_hyp, errors=utt.errors, num_ref=utt.num_ref)
    return rec
