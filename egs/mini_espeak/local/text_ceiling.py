"""The text-input ceiling of a "repeat the sentence" prompt: the frozen LLM (the KD teacher) gets each transcript as
TEXT, framed exactly as in training (``[system | instruction + transcript | assistant header]``, blspkd/teacher.py
``prompt_ids``), and generates greedily; the WER of its answers is the best a speech student imitating it can reach
with that prompt. Several phrasings are compared so the recipe can use the best one as its transcription instruction.

Usage:
    python local/text_ceiling.py --llm downloads/SmolLM2-135M-Instruct --dump_dir dump/test \\
        --out_dir exp/text_ceiling [--prompts_file FILE] [--batch_size 50] [--max_new_tokens 48]

``--prompts_file``: one candidate per line, ``<instruction>`` or ``<instruction> ||| <system prompt>`` (an empty
instruction means none; no system prompt keeps the chat template's default). Without it the built-in candidates below
are tried. Writes ``<out_dir>/<n>/{hyp.txt,result.txt,result.json,...}`` per candidate (scored with blspkd's scorer,
the same normaliser as stage 7) and ``<out_dir>/summary.tsv`` (WER, exact-match count, prompt), best first.
"""
from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

from blspkd.data.kaldi_dir import read_kv, write_kv
from blspkd.data.prompts import ChatFraming
from blspkd.scoring import score_files
from blspkd.scoring.normalize import get_normalizer
from blspkd.scoring.report import write_set_results
from blspkd.teacher import generate_greedy, load_llm, prompt_ids
from blspkd.utils.logging import setup_logging

log = logging.getLogger("text_ceiling")

# (instruction, system prompt); None = the template's default system prompt
CANDIDATES: list[tuple[str | None, str | None]] = [
    ("Repeat the following sentence exactly.", None),
    ("Repeat the following sentence exactly.", "You repeat the user's text exactly, word for word."),
    (None, "You repeat the user's text exactly, word for word."),
    ("Repeat the following sentence exactly, word for word, and write nothing else.", None),
]


def read_candidates(path: str) -> list[tuple[str | None, str | None]]:
    out = []
    for n, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        instruction, _, system = (part.strip() for part in line.partition("|||"))
        if not instruction and not system:
            raise SystemExit(f"{path}:{n}: neither an instruction nor a system prompt")
        out.append((instruction or None, system or None))
    return out


def main(argv: list[str]) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--llm", required=True, help="HF directory of the chat LLM (the KD teacher)")
    p.add_argument("--dump_dir", required=True, help="data/dump dir whose 'text' holds the sentences")
    p.add_argument("--out_dir", required=True)
    p.add_argument("--prompts_file", default=None, help="candidates, one per line: INSTRUCTION [||| SYSTEM]")
    p.add_argument("--batch_size", type=int, default=50)
    p.add_argument("--max_new_tokens", type=int, default=48)
    p.add_argument("--device", default="auto")
    args = p.parse_args(argv)
    setup_logging()
    texts = read_kv(Path(args.dump_dir) / "text")
    keys = list(texts)
    candidates = read_candidates(args.prompts_file) if args.prompts_file else CANDIDATES
    model, tokenizer = load_llm(args.llm, args.device)
    normalize = get_normalizer("auto", "en")
    out = Path(args.out_dir)
    rows = []
    for n, (instruction, system) in enumerate(candidates):
        framing = ChatFraming(tokenizer, system_prompt=system)
        t0 = time.time()
        hyps: dict[str, str] = {}
        for i in range(0, len(keys), args.batch_size):
            chunk = keys[i:i + args.batch_size]
            prompts = [prompt_ids(framing, instruction, texts[k]) for k in chunk]
            answers, _, _ = generate_greedy(model, tokenizer, prompts, args.max_new_tokens)
            hyps.update(zip(chunk, answers))
        cdir = out / str(n)
        cdir.mkdir(parents=True, exist_ok=True)
        (cdir / "prompt.txt").write_text(f"instruction: {instruction}\nsystem: {system}\n", encoding="utf-8")
        write_kv(cdir / "hyp.txt", {k: v or "" for k, v in hyps.items()})
        write_kv(cdir / "ref.txt", texts)
        result = score_files(cdir / "ref.txt", cdir / "hyp.txt", ["wer"], lang="en")
        write_set_results(cdir, result)
        wer = result.error_rates["wer"].rate
        exact = sum(normalize(hyps[k]) == normalize(texts[k]) for k in keys)
        rows.append((wer, exact, instruction, system))
        log.info("candidate %d: WER %.3f, %d/%d exact, %.0f s | instruction: %s | system: %s", n, wer, exact,
                 len(keys), time.time() - t0, instruction, system)
    rows.sort(key=lambda r: r[0])
    with open(out / "summary.tsv", "w", encoding="utf-8") as f:
        f.write("wer\texact\tinstruction\tsystem_prompt\n")
        for wer, exact, instruction, system in rows:
            f.write(f"{wer:.4f}\t{exact}/{len(keys)}\t{instruction or '-'}\t{system or '(template default)'}\n")
    log.info("best: WER %.3f with instruction %r, system prompt %r; table in %s", rows[0][0], rows[0][2], rows[0][3],
             out / "summary.tsv")


if __name__ == "__main__":
    main(sys.argv[1:])
