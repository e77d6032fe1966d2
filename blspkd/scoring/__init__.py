"""Scoring (recipe stage 7): WER/CER with jiwer after a documented normaliser, BLEU/chrF with sacrebleu, the
behaviour-alignment measure, per-set result files and the aggregated RESULTS.md.
Entry point: ``python -m blspkd.bin.score``.
"""
from .scorer import METRICS, ScoreResult, parse_metrics, score_files
from .text_files import ScoringError

__all__ = ["METRICS", "ScoreResult", "ScoringError", "parse_metrics", "score_files"]
