"""Score decoding output (recipe stage 7) and aggregate the results into RESULTS.md.

Usage:
    # transcription: WER, CER, BLEU and chrF of hyp.txt against the transcripts
    python -m blspkd.bin.score --ref data/test/text --hyp exp/x/decode_test/hyp.txt --metric all --lang en \\
        --out_dir exp/x/decode_test
    # behaviour alignment: speech-input continuations against the LLM's text-input continuations
    python -m blspkd.bin.score --ref dump/test/continuation --hyp exp/x/decode_test_continuation/hyp.txt \\
        --metric align --lang en --out_dir exp/x/decode_test_continuation
    # collect every exp/**/result.json into a Markdown table a reader can reproduce
    python -m blspkd.bin.score --aggregate exp --results_md RESULTS.md

Files are Kaldi style, one ``<utt-id> <text>`` per line. Different key sets are an error naming the missing/extra keys
unless --allow_missing (then the common utterances are scored and the counts logged). Empty hypotheses are scored as
such; an empty reference is an error naming file:line. Writes result.txt, result.json and per-utterance lists
(errors_wer.txt, utts_wer.jsonl, sentences_bleu.jsonl, ...) into --out_dir (default: the hypothesis' directory).
Options accept '-' or '_' (--out-dir = --out_dir).
"""
from __future__ import annotations

import shlex
import sys
from pathlib import Path

from blspkd.bin._args import ArgumentParser, cli, opt
from blspkd.scoring import METRICS, parse_metrics, score_files
from blspkd.scoring.normalize import NORMALIZERS
from blspkd.scoring.report import write_results_md, write_set_results
from blspkd.utils.logging import setup_logging


def build_parser() -> ArgumentParser:
    p = ArgumentParser("python -m blspkd.bin.score", __doc__)
    g = p.add_argument_group("scoring one decode dir")
    g.add_argument("--ref", help="reference file (data/<set>/text, or dump/<set>/continuation for --metric align)")
    g.add_argument("--hyp", help="hypothesis file (exp/<tag>/decode_<set>/hyp.txt)")
    g.add_argument(
        "--metric", default="all",
        help=f"comma-separated among {', '.join(METRICS)}; all = wer,cer,bleu,chrf (default: %(default)s)",
    )
    g.add_argument("--lang", default="en", help="text language, picks normaliser and BLEU tokeniser (default: en)")
    g.add_argument(
        "--normalizer", choices=NORMALIZERS, default="auto",
        help="text normaliser before WER/CER; auto = whisper_en for English, basic otherwise (default: auto)",
    )
    g.add_argument(*opt("out_dir"), dest="out_dir", help="where result.* go (default: the directory of --hyp)")
    g.add_argument(*opt("allow_missing"), dest="allow_missing", action="store_true",
                   help="score the utterances common to both files instead of failing on different key sets")
    a = p.add_argument_group("aggregating into RESULTS.md")
    a.add_argument("--aggregate", nargs="+", metavar="DIR", help="collect every result.json under these dirs")
    a.add_argument(*opt("results_md"), dest="results_md", default="RESULTS.md", help="output (default: RESULTS.md)")
    p.add_argument(*opt("log_level"), dest="log_level", default="INFO", help="(default: INFO)")
    return p


@cli
def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    setup_logging(args.log_level)
    command = shlex.join(["python", "-m", "blspkd.bin.score", *argv])
    if args.aggregate:
        from blspkd.scoring.report import collect_results

        table = write_results_md(collect_results(args.aggregate), args.results_md, command)
        print(table, end="")
        return 0
    if not args.ref or not args.hyp:
        parser.error("--ref and --hyp are required (or use --aggregate DIR)")
    result = score_files(
        args.ref, args.hyp, parse_metrics(args.metric), args.lang, args.normalizer, args.allow_missing, command
    )
    out_dir = Path(args.out_dir) if args.out_dir else Path(args.hyp).parent
    write_set_results(out_dir, result)
    print((out_dir / "result.txt").read_text(encoding="utf-8"), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
