"""Result files of one decode dir (result.txt, result.json, per-utterance lists) and the aggregated RESULTS.md.

Per decode dir (written by ``write_set_results``):
  result.json        every number, input hashes, normaliser, tokeniser, sacrebleu signatures, scorer versions, command
  result.txt         the same for a human, plus the most frequent errors
  errors_{wer,cer}.txt    sclite-style alignments of the utterances with errors, most errors first
  utts_{wer,cer}.jsonl    every utterance: raw and normalised texts, S/D/I/H counts, aligned ops (key order)
  sentences_{bleu,align}.jsonl  sentence BLEU and chrF per utterance, worst first
  sentences_exact.jsonl   the normalised reference and hypothesis of every utterance, mismatches first

RESULTS.md (``write_results_md``) collects every ``result.json`` under the given roots with what sits beside it:
``decode_config.yaml`` (decode settings), ``hyp.jsonl``, the model dir's configs. Config hashes are sha256 of the
resolved config (``json.dumps(parsed, sort_keys=True)``, so formatting and key order do not change them), shown as
12-hex prefixes.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import shlex
import time
from pathlib import Path

import yaml

from .scorer import RESULT_FORMAT, ScoreResult, package_versions
from .text_files import ScoringError
from .wer import format_alignment, top_confusions, utt_record

log = logging.getLogger(__name__)

DECODE_CONFIG = "decode_config.yaml"
MODEL_CONFIG_NAMES = ("config.json", "config.yaml", "train_config.yaml", "train.yaml")
MODEL_DIR_KEYS = ("model_dir", "model", "model_path", "exp_dir")
METRIC_LABELS = {
    "wer": "WER (%)",
    "cer": "CER (%)",
    "bleu": "BLEU",
    "chrf": "chrF",
    "align_bleu": "align BLEU",
    "align_chrf": "align chrF",
    "align_chrf_mismatched": "align chrF, other utterances' refs",
    "exact": "exact match (%)",
}


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def metric_details(name: str, m: dict) -> str:
    """The short detail column of a metric: S/D/I/N for error rates, n-gram precisions and BP for BLEU."""
    if name in ("wer", "cer"):
        return f"S={m['substitutions']} D={m['deletions']} I={m['insertions']} N={m['num_ref']}"
    if name == "exact":
        return f"{m['num_exact']}/{m['num_utts']} after the normaliser"
    if "precisions" in m:
        return "/".join(f"{p:.1f}" for p in m["precisions"]) + f" BP={m['brevity_penalty']:.3f}"
    return ""


def format_result_txt(s: dict, confusions: dict[str, dict], files: list[str]) -> str:
    lines = [
        "blspkd scoring result",
        f"ref: {s['ref']}  (sha256 {s['ref_sha256']})",
        f"hyp: {s['hyp']}  (sha256 {s['hyp_sha256']})",
        f"utterances scored: {s['num_scored']} (reference keys without hypothesis: {s['num_missing_hyp']}, "
        f"hypothesis keys without reference: {s['num_extra_hyp']}, empty hypotheses: {s['num_empty_hyp']})",
        f"language: {s['lang']}",
    ]
    if s["normalizer"]:
        lines.append(f"normaliser (WER/CER/exact match): {s['normalizer']}")
    if s["bleu_tokenizer"]:
        lines.append(f"BLEU tokeniser: {s['bleu_tokenizer']} (BLEU/chrF use the raw, un-normalised text)")
    lines.append("")
    for name, m in s["metrics"].items():
        label = METRIC_LABELS[name]
        if name == "exact":
            lines.append(f"{label:<11} {m['score']:.2f}  [{metric_details(name, m)}]")
        elif name in ("wer", "cer"):
            lines.append(
                f"{label:<11} {m['score']:.2f}  [{metric_details(name, m)}, hits={m['hits']}]  "
                f"sentence error rate {m['sentence_error_rate']:.2f}% ({m['num_utts_with_errors']}/{m['num_utts']})"
            )
        else:
            lines.append(f"{label:<11} {m['score']:.2f}  {m['text']}")
            lines.append(f"{'':<11} signature {m['signature']}")
    if any(k.startswith("align_") for k in s["metrics"]):
        lines.append("(align = behaviour alignment: speech-input responses scored against the text-input responses)")
    for name, conf in confusions.items():
        lines.append(f"\nMost frequent errors ({name.upper()}):")
        for kind, items in conf.items():
            shown = ", ".join(f"{tok!r} x{n}" for tok, n in items) or "none"
            lines.append(f"  {kind}: {shown}")
    versions = ", ".join(f"{k} {v}" for k, v in s["versions"].items())
    lines += ["", f"versions: {versions}, python {s['python']}", f"command: {s['command']}", f"created: {s['created']}"]
    lines.append("per-utterance files: " + ", ".join(files))
    return "\n".join(lines) + "\n"


def write_set_results(out_dir: str | Path, result: ScoreResult) -> list[Path]:
    """Write result.json, result.txt and the per-utterance lists into ``out_dir``; returns the written paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    confusions = {}
    for name, er in result.error_rates.items():
        with_errors = sorted((u for u in er.utts if u.errors), key=lambda u: (-u.errors, u.key))
        header = f"# {len(with_errors)} of {er.num_utts} utterances with errors ({name.upper()}), most errors first\n"
        gap = "***" if er.unit == "word" else "*"
        blocks = "\n".join(format_alignment(u, gap) for u in with_errors)
        _write_atomic(out / f"errors_{name}.txt", header + blocks)
        records = (utt_record(u, result.refs[u.key], result.hyps[u.key]) for u in er.utts)
        _write_atomic(out / f"utts_{name}.jsonl", "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
        written += [out / f"errors_{name}.txt", out / f"utts_{name}.jsonl"]
        confusions[name] = top_confusions(er)
    for group, rows in result.sentences.items():
        path = out / f"sentences_{group}.jsonl"
        _write_atomic(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
        written.append(path)
    _write_atomic(out / "result.json", json.dumps(result.summary, indent=2, ensure_ascii=False) + "\n")
    txt = format_result_txt(result.summary, confusions, [p.name for p in written])
    _write_atomic(out / "result.txt", txt)
    written = [out / "result.json", out / "result.txt", *written]
    log.info("wrote %s", ", ".join(str(p) for p in written))
    return written


# ----------------------------------------------------------------------------------------------------------------------
# aggregation


def config_hash(path: Path) -> str | None:
    """sha256 of a resolved YAML/JSON config, independent of formatting and key order; None if unreadable."""
    try:
        text = path.read_text(encoding="utf-8")
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (OSError, UnicodeDecodeError, ValueError, yaml.YAMLError) as e:
        log.warning("%s: cannot be parsed for hashing (%s); hashed as raw bytes", path, e)
        data = {"raw": path.read_bytes().hex()} if path.is_file() else None
    if data is None:
        return None
    canonical = json.dumps(data, sort_keys=True, ensure_ascii=False, default=str)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def _flatten(d: dict, prefix: str = "") -> dict[str, object]:
    out: dict[str, object] = {}
    for k, v in d.items():
        if isinstance(v, dict) and v:
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _short(value: object, limit: int = 60) -> str:
    text = json.dumps(value, ensure_ascii=False) if not isinstance(value, str) else value
    return text if len(text) <= limit else text[: limit - 3] + "..."


def collect_decode_dir(result_json: Path) -> dict | None:
    """Everything RESULTS.md shows for one decode dir (None for a result.json not written by blspkd.bin.score).

    Missing side files are recorded as absent, never fatal.
    """
    decode_dir = result_json.parent
    try:
        summary = json.loads(result_json.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ScoringError(f"{result_json}: unreadable ({e}); re-run scoring for {decode_dir}") from None
    if not isinstance(summary, dict) or summary.get("format") != RESULT_FORMAT:
        return None
    entry: dict = {"decode_dir": str(decode_dir), "result": summary, "decode_config": None, "model_dir": None}
    decode_cfg_path = decode_dir / DECODE_CONFIG
    decode_cfg: dict = {}
    if decode_cfg_path.is_file():
        try:
            decode_cfg = yaml.safe_load(decode_cfg_path.read_text(encoding="utf-8")) or {}
        except (yaml.YAMLError, UnicodeDecodeError) as e:
            log.warning("%s: unreadable (%s); its settings are left out of RESULTS.md", decode_cfg_path, e)
        if not isinstance(decode_cfg, dict):
            decode_cfg = {}
        entry["decode_config"] = {
            "path": str(decode_cfg_path),
            "sha256": config_hash(decode_cfg_path),
            "settings": _flatten(decode_cfg),
        }
    model_dir = next((Path(decode_cfg[k]) for k in MODEL_DIR_KEYS if isinstance(decode_cfg.get(k), str)), None)
    if model_dir is None or not model_dir.is_dir():
        model_dir = decode_dir.parent
    entry["model_dir"] = str(model_dir)
    entry["model_configs"] = {
        name: config_hash(model_dir / name) for name in MODEL_CONFIG_NAMES if (model_dir / name).is_file()
    }
    hyp_jsonl = decode_dir / "hyp.jsonl"
    if hyp_jsonl.is_file():
        with hyp_jsonl.open("rb") as f:
            entry["hyp_jsonl_lines"] = sum(1 for _ in f)
    return entry


def collect_results(roots: list[str | Path]) -> list[dict]:
    """Every result.json under ``roots`` (searched recursively), in path order."""
    entries: list[dict] = []
    foreign = 0
    for root in roots:
        root = Path(root)
        if not root.exists():
            raise FileNotFoundError(f"{root}: no such directory to collect results from")
        paths = [root] if root.is_file() else sorted(root.rglob("result.json"))
        for p in paths:
            entry = collect_decode_dir(p)
            if entry is None:
                foreign += 1
                log.warning("%s: not a blspkd score result (no format %r); left out", p, RESULT_FORMAT)
            else:
                entries.append(entry)
    if not entries:
        raise FileNotFoundError(f"no result.json under {', '.join(map(str, roots))}; run scoring (stage 7) first")
    log.info("collected %d scored decode dirs (%d other result.json files left out)", len(entries), foreign)
    return entries


def _set_name(decode_dir: Path) -> str:
    name = decode_dir.name
    return name[len("decode_") :] if name.startswith("decode_") else name


def results_table(entries: list[dict]) -> str:
    rows = ["| model | set | metric | score | details | utts |", "|---|---|---|---|---|---|"]
    for e in entries:
        d = Path(e["decode_dir"])
        for name, m in e["result"]["metrics"].items():
            rows.append(
                f"| {d.parent} | {_set_name(d)} | {METRIC_LABELS.get(name, name)} | {m['score']:.2f} | "
                f"{metric_details(name, m)} | {m.get('num_utts', e['result']['num_scored'])} |"
            )
    return "\n".join(rows) + "\n"


def _reproduce_section(e: dict) -> str:
    r = e["result"]
    lines = [f"### {e['decode_dir']}", f"- model dir: `{e['model_dir']}`"]
    if e["model_configs"]:
        hashes = ", ".join(f"{n} sha256 `{h[:12] if h else 'unreadable'}`" for n, h in e["model_configs"].items())
        lines.append(f"- model configs: {hashes}")
    dc = e["decode_config"]
    if dc:
        lines.append(f"- decode config: `{dc['path']}` sha256 `{(dc['sha256'] or 'empty')[:12]}`")
        if dc["settings"]:
            lines.append("- decode settings: " + ", ".join(f"`{k}={_short(v)}`" for k, v in dc["settings"].items()))
    else:
        lines.append(f"- decode config: none found ({DECODE_CONFIG} absent)")
    lines.append(f"- reference: `{r['ref']}` sha256 `{r['ref_sha256'][:12]}`; hypothesis: `{r['hyp']}` sha256 "
                 f"`{r['hyp_sha256'][:12]}`" + (f" ({e['hyp_jsonl_lines']} lines in hyp.jsonl)"
                                                 if "hyp_jsonl_lines" in e else ""))
    lines.append(
        f"- utterances: {r['num_scored']} scored, {r['num_missing_hyp']} without hypothesis, "
        f"{r['num_empty_hyp']} empty hypotheses; language `{r['lang']}`"
    )
    if r.get("normalizer"):
        lines.append(f"- WER/CER/exact-match normaliser: {r['normalizer']}")
    sigs = [f"{METRIC_LABELS.get(n, n)} `{m['signature']}`" for n, m in r["metrics"].items() if "signature" in m]
    if sigs:
        lines.append("- sacrebleu signatures: " + "; ".join(sigs))
    lines.append("- scorers: " + ", ".join(f"{k} {v}" for k, v in r["versions"].items()))
    if r.get("command"):
        lines.append(f"- scoring command: `{r['command']}`")
    return "\n".join(lines) + "\n"


def _relative(value: object, base: Path) -> object:
    """An absolute path as seen from ``base`` (RESULTS.md's directory, the recipe), so the file names no machine."""
    if isinstance(value, str) and os.path.isabs(value):
        return os.path.relpath(value, base)
    return value


def _relative_command(command: str, base: Path) -> str:
    return shlex.join(str(_relative(word, base)) for word in shlex.split(command)) if command else command


def _relative_entry(e: dict, base: Path) -> dict:
    e = {**e, "decode_dir": _relative(e["decode_dir"], base), "model_dir": _relative(e["model_dir"], base)}
    r = e["result"]
    e["result"] = {**r, "ref": _relative(r["ref"], base), "hyp": _relative(r["hyp"], base),
                   "command": _relative_command(r.get("command") or "", base)}
    if e["decode_config"]:
        dc = e["decode_config"]
        e["decode_config"] = {**dc, "path": _relative(dc["path"], base),
                              "settings": {k: _relative(v, base) for k, v in dc["settings"].items()}}
    return e


def write_results_md(entries: list[dict], path: str | Path, command: str = "") -> str:
    """Write RESULTS.md (replacing it) and return the results table. Paths are written relative to its directory."""
    base = Path(path).resolve().parent
    entries = [_relative_entry(e, base) for e in entries]
    command = _relative_command(command, base)
    table = results_table(entries)
    versions = package_versions(["blspkd", "jiwer", "sacrebleu", "transformers", "torch"])
    header = [
        "# RESULTS",
        "",
        f"<!-- Generated by blspkd.scoring.report on {time.strftime('%Y-%m-%d %H:%M:%S %Z')}"
        + (f" with: {command}" if command else "") + ". Re-running it rewrites this file. -->",
        "",
        f"- environment: python {platform.python_version()}, "
        + ", ".join(f"{k} {v}" for k, v in versions.items()),
        "- WER/CER in percent after the normaliser named per row below; BLEU/chrF on raw text (sacrebleu signatures "
        "below); `align` = behaviour alignment (speech-input responses against the LLM's text-input responses), and "
        "`align chrF, other utterances' refs` its content-free floor (the same answers against other utterances' "
        "references: what the right form earns without the speech's content); exact match = hypotheses equal to the "
        "reference after the WER normaliser.",
        "- Hashes: sha256 of the resolved configs (key order and formatting do not matter), first 12 hex digits.",
        "",
        "## Results",
        "",
        table,
        "## How to reproduce each row",
        "",
    ]
    text = "\n".join(header) + "\n".join(_reproduce_section(e) for e in entries)
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    _write_atomic(out, text)
    log.info("wrote %s (%d decode dirs)", out, len(entries))
    return table
