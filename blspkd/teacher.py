"""Teacher data for BLSP-KD (recipe stage 3): transcript token counts and responses the frozen LLM gives to the TEXT.

* ``utt2num_tokens``: the number of LLM tokens of each transcript, tokenized on its own without special tokens. This is
  N of the CIF adapter (doc/method.md §3.2), so the sampler can batch by tokens and a reader can see the target counts.
* ``continuation`` (BLSP's behaviour-alignment data, doc/method.md §7): the LLM reads "<instruction><transcript>" as a
  user turn of its chat template and continues greedily for at most ``max_new_tokens`` tokens. The response-KL loss
  later teaches the speech student to behave the same way from speech.
* ``response`` (``task: response``): the LLM's answer when the transcript is itself a question or instruction (spoken
  instruction following), optionally preceded by the dump dir's per-utterance ``instruction``.

Refusals ("I'm sorry", "as an AI language model", ...) and empty outputs are dropped with a logged count; the trainer
skips the utterances that have no response for a task that needs one and logs that count too.

Generation is sharded (``shard`` J of ``num_shards``, contiguous blocks of the sorted keys) and resumable: each shard
appends finished batches to ``<dump_dir>/teacher/<task>.J`` (refusals to ``<task>.refused.J``) and, when re-run, skips
the keys it already has; ``merge`` writes the Kaldi-style file ``<dump_dir>/<task>`` from all shards.
"""
from __future__ import annotations

import json
import logging
import os
import re
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm import tqdm

from blspkd.data.kaldi_dir import read_kv, write_kv
from blspkd.data.prompts import ChatFraming

logger = logging.getLogger(__name__)

DEFAULT_REFUSALS = [
    r"\bI'?m sorry\b", r"\bI am sorry\b", r"\bas an AI\b", r"\bAs a language model\b", r"\bI cannot\b", r"\bI can'?t\b",
    r"\bI apologi[sz]e\b", r"\bI'?m not able to\b", r"\bI am not able to\b", r"\bI'?m unable to\b",
]


@dataclass
class TeacherConfig:
    dump_dir: str = ""
    llm: str = ""
    task: str = "continuation"  # continuation | response | tokens (utt2num_tokens only)
    instruction: str = "Continue the following text in a coherent style: "
    # Chat framing: must match the model config (BlspKdConfig.system_prompt / instruction_separator) of stages 4-5.
    system_prompt: str | None = None
    separator: str = "\n"
    max_new_tokens: int = 48
    batch_size: int = 16
    num_shards: int = 1
    shard: int = 1
    merge: bool = False
    device: str = "auto"  # auto | cpu | cuda
    refusal_patterns: list[str] = field(default_factory=lambda: list(DEFAULT_REFUSALS))
    log_level: str = "INFO"


def count_tokens(tokenizer, texts: dict[str, str]) -> dict[str, int]:
    """LLM tokens per transcript, exactly as the collator tokenizes it (the CIF target N)."""
    framing = ChatFraming(tokenizer)
    return {k: len(framing.transcript_ids(t)) for k, t in texts.items()}


def write_utt2num_tokens(dump_dir: str | Path, tokenizer) -> dict[str, int]:
    dump_dir = Path(dump_dir)
    counts = count_tokens(tokenizer, read_kv(dump_dir / "text"))
    empty = [k for k, n in counts.items() if n == 0]
    if empty:
        raise ValueError(f"{dump_dir / 'text'}: {len(empty)} empty transcript(s) (first: {empty[0]}); fix the data dir")
    write_kv(dump_dir / "utt2num_tokens", {k: str(n) for k, n in counts.items()})
    logger.info("%s: wrote utt2num_tokens for %d utterances (mean %.1f tokens, max %d)", dump_dir, len(counts),
                sum(counts.values()) / max(len(counts), 1), max(counts.values(), default=0))
    return counts


def shard_keys(keys: list[str], shard: int, num_shards: int) -> list[str]:
    """Contiguous block ``shard`` (1-based) of ``num_shards`` of the sorted keys, like Kaldi's split_scp."""
    if not 1 <= shard <= num_shards:
        raise ValueError(f"shard must be in 1..{num_shards}, got {shard}")
    keys = sorted(keys)
    n = len(keys)
    return keys[(shard - 1) * n // num_shards : shard * n // num_shards]


def prompt_ids(framing: ChatFraming, instruction: str | None, text: str) -> list[int]:
    """The teacher's prompt, laid out exactly as the training sequences are (blspkd/data/collate.py):
    ``[prefix with instruction | transcript | suffix]``, so response-KL later compares against this very context."""
    return framing.prefix_ids(instruction) + framing.transcript_ids(text) + framing.suffix_ids


def one_line(text: str) -> str:
    return " ".join(text.split())


class RefusalFilter:
    def __init__(self, patterns: Iterable[str]):
        self.regex = re.compile("|".join(f"(?:{p})" for p in patterns), re.IGNORECASE) if patterns else None

    def __call__(self, text: str) -> bool:
        return not text or (self.regex is not None and self.regex.search(text) is not None)


@torch.no_grad()
def generate_greedy(model, tokenizer, prompts: list[list[int]], max_new_tokens: int) -> tuple[list[str], int]:
    """Greedy continuations of a batch of token-id prompts (left-padded); returns the texts and the new-token count."""
    pad = tokenizer.pad_token_id
    width = max(len(p) for p in prompts)
    ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts], device=model.device)
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=model.device)
    eos = _eos_ids(model, tokenizer)
    out = model.generate(
        input_ids=ids, attention_mask=mask, do_sample=False, num_beams=1, max_new_tokens=max_new_tokens,
        pad_token_id=pad, eos_token_id=eos, top_p=None, top_k=None, temperature=None,
    )
    new = out[:, width:]
    n_tokens = 0
    for row in new.tolist():
        for t in row:
            if t in eos:
                break
            n_tokens += 1
    return [one_line(t) for t in tokenizer.batch_decode(new, skip_special_tokens=True)], n_tokens


def _eos_ids(model, tokenizer) -> list[int]:
    """Tokens that end the teacher's turn: the chat template's end-of-turn marker and the model's EOS ids."""
    eos = model.generation_config.eos_token_id
    ids = ChatFraming(tokenizer).end_of_turn_ids[:1] + (eos if isinstance(eos, list) else [eos])
    return list(dict.fromkeys(i for i in ids + [tokenizer.eos_token_id] if i is not None))


def load_llm(path: str, device: str):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path)
    tokenizer.padding_side = "left"  # generation continues from the last prompt token of every row
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if device.startswith("cuda") and torch.cuda.is_bf16_supported() else torch.float32
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype).to(device).eval()
    return model, tokenizer


def _read_lines(path: Path) -> dict[str, str]:
    """Finished lines of a shard file; a last line cut off by a killed job (no newline) is ignored and regenerated."""
    if not path.is_file():
        return {}
    raw = path.read_text(encoding="utf-8")
    out = {}
    for line in raw.split("\n")[:-1]:  # the part after the last newline is either empty or a torn line
        key, _, value = line.partition(" ")
        out[key] = value
    return out


def _drop_torn_tail(path: Path) -> None:
    """Cut a last line that a killed job left without its newline, so appended lines start on a line of their own."""
    if not path.is_file():
        return
    raw = path.read_bytes()
    keep = raw.rfind(b"\n") + 1
    if keep != len(raw):
        with open(path, "r+b") as f:
            f.truncate(keep)
        logger.warning("%s: removed a torn last line (%d bytes) left by an interrupted job", path, len(raw) - keep)


def _append(path: Path, lines: list[tuple[str, str]]) -> None:
    if not lines:
        return
    with open(path, "a", encoding="utf-8") as f:
        f.write("".join(f"{k} {v}\n" for k, v in lines))
        f.flush()
        os.fsync(f.fileno())


def teacher_prompts(cfg: TeacherConfig, framing: ChatFraming, dump_dir: Path, keys: list[str]) -> dict[str, list]:
    """Prompt ids per key: the continuation instruction, or (task response) the utterance's own ``instruction``."""
    text = read_kv(dump_dir / "text")
    if cfg.task == "continuation":
        return {k: prompt_ids(framing, cfg.instruction, text[k]) for k in keys}
    extra = read_kv(dump_dir / "instruction") if (dump_dir / "instruction").is_file() else {}
    return {k: prompt_ids(framing, extra.get(k), text[k]) for k in keys}


def run_shard(cfg: TeacherConfig) -> dict[str, float]:
    """Generate the responses of one shard (resumable); returns throughput figures."""
    dump_dir = Path(cfg.dump_dir)
    out_dir = dump_dir / "teacher"
    out_dir.mkdir(exist_ok=True)
    done_path = out_dir / f"{cfg.task}.{cfg.shard}"
    refused_path = out_dir / f"{cfg.task}.refused.{cfg.shard}"
    keys = shard_keys(list(read_kv(dump_dir / "text")), cfg.shard, cfg.num_shards)
    _drop_torn_tail(done_path)
    _drop_torn_tail(refused_path)
    have = set(_read_lines(done_path)) | set(_read_lines(refused_path))
    todo = [k for k in keys if k not in have]
    logger.info("shard %d/%d: %d utterances, %d already done, %d to generate", cfg.shard, cfg.num_shards, len(keys),
                len(keys) - len(todo), len(todo))
    stats = {"utterances": 0, "new_tokens": 0, "refused": 0, "seconds": 0.0}
    if todo:
        model, tokenizer = load_llm(cfg.llm, cfg.device)
        prompts = teacher_prompts(cfg, ChatFraming(tokenizer, cfg.system_prompt, cfg.separator), dump_dir, todo)
        refusal = RefusalFilter(cfg.refusal_patterns)
        # Similar prompt lengths in a batch waste less padding.
        todo.sort(key=lambda k: len(prompts[k]))
        t0 = time.time()
        for i in tqdm(range(0, len(todo), cfg.batch_size), desc=f"teacher {cfg.task} shard {cfg.shard}",
                      disable=None):
            batch = todo[i : i + cfg.batch_size]
            texts, n_new = generate_greedy(model, tokenizer, [prompts[k] for k in batch], cfg.max_new_tokens)
            good = [(k, t) for k, t in zip(batch, texts) if not refusal(t)]
            bad = [(k, t or "<empty>") for k, t in zip(batch, texts) if refusal(t)]
            # Refusals first: a kill between the two writes then regenerates the good ones rather than losing them.
            _append(refused_path, bad)
            _append(done_path, good)
            stats["utterances"] += len(batch)
            stats["new_tokens"] += n_new
            stats["refused"] += len(bad)
        stats["seconds"] = time.time() - t0
        logger.info(
            "shard %d: generated %d responses in %.1f s: %.2f utt/s, %.1f new tokens/s (device %s, batch %d); "
            "%d refusal(s) or empty output(s) dropped", cfg.shard, stats["utterances"], stats["seconds"],
            stats["utterances"] / max(stats["seconds"], 1e-9), stats["new_tokens"] / max(stats["seconds"], 1e-9),
            model.device, cfg.batch_size, stats["refused"],
        )
        with open(out_dir / f"{cfg.task}.stats.{cfg.shard}", "a", encoding="utf-8") as f:
            f.write(json.dumps(stats) + "\n")
    return stats


def merge(cfg: TeacherConfig) -> dict[str, str]:
    """Write ``<dump_dir>/<task>`` from the shard files; every shard must be complete."""
    dump_dir = Path(cfg.dump_dir)
    out_dir = dump_dir / "teacher"
    all_keys = list(read_kv(dump_dir / "text"))
    merged: dict[str, str] = {}
    refused = 0
    for j in range(1, cfg.num_shards + 1):
        keys = shard_keys(all_keys, j, cfg.num_shards)
        good = _read_lines(out_dir / f"{cfg.task}.{j}")
        bad = _read_lines(out_dir / f"{cfg.task}.refused.{j}")
        missing = [k for k in keys if k not in good and k not in bad]
        if missing:
            raise RuntimeError(
                f"{out_dir / f'{cfg.task}.{j}'}: shard {j} of {cfg.num_shards} is incomplete ({len(missing)} of "
                f"{len(keys)} utterances missing, first {missing[0]}); re-run that shard (it resumes), then merge again"
            )
        merged.update({k: good[k] for k in keys if k in good})
        refused += sum(1 for k in keys if k in bad)
    write_kv(dump_dir / cfg.task, merged)
    seconds = tokens = 0.0
    for p in out_dir.glob(f"{cfg.task}.stats.*"):
        for line in p.read_text(encoding="utf-8").splitlines():
            s = json.loads(line)
            seconds += s["seconds"]
            tokens += s["new_tokens"]
    logger.info("%s: wrote %d %s lines; %d refusal(s)/empty output(s) dropped (%.1f%%); generation took %.1f s of job "
                "time in all, %.1f new tokens/s per job", dump_dir / cfg.task, len(merged), cfg.task, refused,
                100.0 * refused / max(len(all_keys), 1), seconds, tokens / max(seconds, 1e-9))
    return merged
