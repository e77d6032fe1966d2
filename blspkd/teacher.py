"""Teacher data for BLSP-KD (recipe stage 3): transcript token counts and responses the frozen LLM gives to the TEXT.

* ``utt2num_tokens``: the number of LLM tokens of each transcript, tokenized on its own without special tokens. This is
  N of the CIF adapter (doc/method.md §3.2), so the sampler can batch by tokens and a reader can see the target counts.
* a teacher task of the registry (blspkd/tasks.py; ``continuation`` by default, BLSP's behaviour-alignment data,
  doc/method.md §7): the LLM reads the task's instruction (or the utterance's own) and the transcript as a user turn of
  its chat template and answers greedily (no repetition penalty, whatever the LLM's generation_config says) for at
  most ``max_new_tokens`` tokens. The answers go to the task's response file (``<dump_dir>/continuation``, ...), and
  ``<response>.truncated`` says which stopped at the token limit (training leaves their end of turn off).

The prompt is framed exactly as the model is decoded (stage 6) and trained: the system prompt and the instruction
separator come from the ``model`` sections of ``model_configs`` (the training configs of stages 4-5, in the order
their ``init_from`` chain applies them), else from ``system_prompt``/``separator``.

Refusals ("I'm sorry, but ...", "as an AI language model", "I can't help with ...") and empty outputs are dropped with
a logged count and examples; the trainer skips the utterances that have no response for a task that needs one and logs
that count too.

Sharding and resume follow blspkd/utils/shards.py: shard J appends finished batches to
``<dump_dir>/teacher/<task>/shards/lines.J.jsonl`` (its first line: the settings) and, when re-run with the same
settings, generates only the keys it does not have yet; ``.completed.J`` marks a finished shard. ``merge`` writes the
Kaldi-style response file and its ``.truncated`` flags from all shards, then ``<dump_dir>/teacher/<task>/.completed``.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import time
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm import tqdm

from blspkd import tasks
from blspkd.data.kaldi_dir import DataDirError, read_kv, write_kv
from blspkd.data.prompts import CHAT_DATE, ChatFraming
from blspkd.utils.config import ConfigError, load_yaml
from blspkd.utils.shards import MARKER, ShardError, Shards, shard_keys, write_marker

logger = logging.getLogger(__name__)

# Refusals, not ordinary text: an apology that opens the answer, the AI disclaimer, or "I can't" + a request verb.
# ("I cannot believe ...", "I can't wait ..." in a continuation are kept.)
DEFAULT_REFUSALS = [
    r"^\W*(?:I[’']?m|I am) (?:so |very |really |truly )?sorry\b",
    r"^\W*I (?:sincerely )?apologi[sz]e\b",
    r"\bas an AI\b",
    r"\bas a (?:large )?language model\b",
    r"\bI (?:cannot|can(?:[’']?t| not)|am unable to|[’']?m unable to|am not able to|[’']?m not able to|won[’']?t be "
    r"able to) (?:help|assist|provide|comply|fulfil+|answer|complete|generate|create|write|continue|engage|support|"
    r"do that|do this)\b",
]
NUM_EXAMPLES = 3  # dropped texts shown in the log


@dataclass
class TeacherConfig:
    dump_dir: str = ""
    llm: str = ""
    # tokens (utt2num_tokens only), or a teacher task of blspkd/tasks.py (continuation, spoken_instruction, ...).
    task: str = "continuation"
    # Replaces the task's instruction (for continuation: "Continue the following text in a coherent style: ").
    instruction: str | None = None
    # The training configs (YAML) of the model whose decoding this data is compared with, in init_from order
    # (warm start, pretraining, fine-tuning): their model.system_prompt / model.instruction_separator frame the prompts.
    model_configs: list[str] = field(default_factory=list)
    # Without model_configs: the chat framing (BlspKdConfig.system_prompt / instruction_separator of stages 4-5).
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


def framing_settings(cfg: TeacherConfig) -> tuple[str | None, str]:
    """(system prompt, instruction separator) the model is trained and decoded with: the ``model`` sections of
    ``cfg.model_configs`` (later ones win, unset keys keep BlspKdConfig's defaults), else the config's own fields."""
    if not cfg.model_configs:
        return cfg.system_prompt, cfg.separator
    if cfg.system_prompt is not None or cfg.separator != "\n":
        raise ConfigError("give model_configs (the framing of the trained model) or system_prompt/separator, not both")
    from blspkd.models.configuration_blspkd import BlspKdConfig

    default = BlspKdConfig()
    framing = {"system_prompt": default.system_prompt, "instruction_separator": default.instruction_separator}
    for path in cfg.model_configs:
        model = load_yaml(path).get("model") or {}
        if not isinstance(model, dict):
            raise ConfigError(f"{path}: 'model' must be a mapping")
        framing.update({k: model[k] for k in framing if k in model})
    return framing["system_prompt"], framing["instruction_separator"]


def count_tokens(tokenizer, texts: dict[str, str]) -> dict[str, int]:
    """LLM tokens per transcript, exactly as the collator tokenizes it (the CIF target N)."""
    framing = ChatFraming(tokenizer)
    return {k: len(framing.transcript_ids(t)) for k, t in texts.items()}


def write_utt2num_tokens(dump_dir: str | Path, tokenizer) -> dict[str, int]:
    dump_dir = Path(dump_dir)
    counts = count_tokens(tokenizer, read_kv(dump_dir / "text"))
    empty = [k for k, n in counts.items() if n == 0]
    if empty:
        raise DataDirError(f"{dump_dir / 'text'}: {len(empty)} empty transcript(s) (first: {empty[0]!r}). Fix: give "
                           f"them a transcript, or drop them (utils/fix_data_dir.sh) and re-run stage 2")
    write_kv(dump_dir / "utt2num_tokens", {k: str(n) for k, n in counts.items()})
    logger.info("%s: wrote utt2num_tokens for %d utterances (mean %.1f tokens, max %d)", dump_dir, len(counts),
                sum(counts.values()) / max(len(counts), 1), max(counts.values(), default=0))
    return counts


def prompt_ids(framing: ChatFraming, instruction: str | None, text: str) -> list[int]:
    """The teacher's prompt, laid out exactly as the training sequences are (blspkd/data/collate.py):
    ``[prefix with instruction | transcript | suffix]``, so response-KL later compares against this very context."""
    return framing.prefix_ids(instruction) + framing.transcript_ids(text) + framing.suffix_ids


def one_line(text: str) -> str:
    """Generated text as one value of a data file: runs of whitespace and control characters (an LLM can emit them;
    the data-dir reader refuses them, blspkd/data/kaldi_dir.py) become one space."""
    return " ".join("".join(" " if unicodedata.category(c) == "Cc" else c for c in text).split())


class RefusalFilter:
    def __init__(self, patterns: Iterable[str]):
        self.regex = re.compile("|".join(f"(?:{p})" for p in patterns), re.IGNORECASE) if patterns else None

    def __call__(self, text: str) -> bool:
        return not text or (self.regex is not None and self.regex.search(text) is not None)


@torch.no_grad()
def generate_greedy(model, tokenizer, prompts: list[list[int]], max_new_tokens: int
                    ) -> tuple[list[str], list[bool], int]:
    """Greedy continuations of a batch of token-id prompts (left-padded); returns the texts, whether each stopped at
    ``max_new_tokens`` rather than at an end-of-turn token, and the new-token count."""
    pad = tokenizer.pad_token_id
    width = max(len(p) for p in prompts)
    ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts], device=model.device)
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=model.device)
    eos = _eos_ids(model, tokenizer)
    # The LLM's generation_config may carry sampling or repetition settings (Qwen2.5-Instruct: repetition_penalty
    # 1.05); the teacher's answer is the plain greedy one, as decoding's is (blspkd/decode.py generation_kwargs).
    out = model.generate(
        input_ids=ids, attention_mask=mask, do_sample=False, num_beams=1, max_new_tokens=max_new_tokens,
        pad_token_id=pad, eos_token_id=eos, top_p=None, top_k=None, temperature=None, repetition_penalty=1.0,
        no_repeat_ngram_size=0,
    )
    new = out[:, width:]
    n_tokens = 0
    truncated = []
    for row in new.tolist():
        n = next((i for i, t in enumerate(row) if t in eos), len(row))
        n_tokens += n
        truncated.append(n >= max_new_tokens)
    return [one_line(t) for t in tokenizer.batch_decode(new, skip_special_tokens=True)], truncated, n_tokens


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


# ---- shard files -----------------------------------------------------------------------------------------------------
def _lines_file(shards: Shards, shard: int) -> Path:
    return shards.dir / f"lines.{shard}.jsonl"


def _read_lines(path: Path, signature: dict) -> dict[str, dict] | None:
    """The finished records of a shard's lines file written with ``signature`` (None: no such file, or one of other
    settings). A last line cut off by a killed job (no newline) is removed, so appended lines start on their own."""
    if not path.is_file():
        return None
    raw = path.read_bytes()
    keep = raw.rfind(b"\n") + 1
    if keep != len(raw):
        with open(path, "r+b") as f:
            f.truncate(keep)
        logger.warning("%s: removed a torn last line (%d bytes) left by an interrupted job", path, len(raw) - keep)
    lines = raw[:keep].decode("utf-8").splitlines()
    if not lines or json.loads(lines[0]).get("signature") != signature:
        return None
    return {r["key"]: r for r in map(json.loads, lines[1:])}


def _append(path: Path, records: list[dict]) -> None:
    with open(path, "a", encoding="utf-8") as f:
        f.write("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
        f.flush()
        os.fsync(f.fileno())


def _log_dropped(what: str, records: Iterable[dict]) -> int:
    dropped = [r for r in records if r["refused"]]
    if dropped:
        examples = "; ".join(f"{r['key']}: {r['text'][:80]!r}" for r in dropped[:NUM_EXAMPLES])
        logger.info("%s: %d refusal(s) or empty output(s) dropped, e.g. %s", what, len(dropped), examples)
    return len(dropped)


# ---- generation ------------------------------------------------------------------------------------------------------
def teacher_task(cfg: TeacherConfig) -> tasks.Task:
    task = tasks.get_task(cfg.task)
    if not task.teacher:
        teachers = [t.name for t in tasks.TASKS.values() if t.teacher]
        raise ConfigError(f"task '{cfg.task}' takes no teacher data; choose tokens or one of {', '.join(teachers)}")
    return task


def teacher_instructions(cfg: TeacherConfig, dump_dir: Path, keys: list[str]) -> dict[str, str | None]:
    """The instruction of every key: the task's (or ``cfg.instruction``), or the utterance's own ``instruction``."""
    per_utt_path = dump_dir / "instruction"
    per_utt = read_kv(per_utt_path) if per_utt_path.is_file() else None
    return tasks.utterance_instructions(cfg.task, keys, per_utt, str(per_utt_path), cfg.instruction)


def teacher_texts(cfg: TeacherConfig, dump_dir: Path) -> dict[str, str]:
    """The transcripts the teacher answers: every one, except for a task whose instruction can only come from the
    utterances (``required``, none given): then those the ``instruction`` file names, because a training set gives
    instructions to a subset of its utterances (blspkd/instruction_eval.py). The others are counted in the log."""
    text = read_kv(dump_dir / "text")
    path = dump_dir / "instruction"
    if tasks.get_task(cfg.task).utterance_instruction != "required" or cfg.instruction or not path.is_file():
        return text
    named = {k for k, v in read_kv(path).items() if v.strip()}
    kept = {k: t for k, t in text.items() if k in named}
    if not kept:
        raise DataDirError(f"{path}: names none of the utterances of {dump_dir / 'text'}; give them instructions")
    if len(kept) < len(text):
        logger.info("%s: %d of the %d utterances have an instruction; the teacher answers those", path, len(kept),
                    len(text))
    return kept


def shard_signature(cfg: TeacherConfig, text: dict[str, str], instructions: dict[str, str | None]) -> dict:
    """What a shard's responses depend on; lines or markers of any other signature are not reused."""
    system_prompt, separator = framing_settings(cfg)
    h = hashlib.sha1()
    for k in sorted(instructions):
        h.update(json.dumps([k, text[k], instructions[k]]).encode())
    return {"llm": str(Path(cfg.llm).resolve()), "task": cfg.task, "system_prompt": system_prompt,
            "separator": separator, "chat_date": CHAT_DATE.isoformat(), "max_new_tokens": cfg.max_new_tokens,
            "refusal_patterns": cfg.refusal_patterns, "num_shards": cfg.num_shards, "shard_inputs_sha1": h.hexdigest()}


def run_shard(cfg: TeacherConfig) -> dict[str, float]:
    """Generate the responses of one shard (resumable); returns throughput figures."""
    teacher_task(cfg)
    dump_dir = Path(cfg.dump_dir)
    shards = Shards(dump_dir / "teacher" / cfg.task, cfg.num_shards)
    text = teacher_texts(cfg, dump_dir)
    keys = shard_keys(text, cfg.shard, cfg.num_shards)
    instructions = teacher_instructions(cfg, dump_dir, keys)
    signature = shard_signature(cfg, text, instructions)
    done = shards.done(cfg.shard, signature)
    if done is not None:
        logger.info("shard %d/%d already done (%s); skipping", cfg.shard, cfg.num_shards, shards.marker(cfg.shard))
        return done["stats"]
    lines_path = _lines_file(shards, cfg.shard)
    have = _read_lines(lines_path, signature)
    if have is None:  # none yet, or lines of other settings: start the shard afresh
        shards.dir.mkdir(parents=True, exist_ok=True)
        lines_path.write_text(json.dumps({"signature": signature}) + "\n", encoding="utf-8")
        have = {}
    todo = [k for k in keys if k not in have]
    logger.info("shard %d/%d: %d utterances, %d already done, %d to generate", cfg.shard, cfg.num_shards, len(keys),
                len(keys) - len(todo), len(todo))
    stats = {"utterances": 0, "new_tokens": 0, "refused": 0, "truncated": 0, "seconds": 0.0}
    if todo:
        model, tokenizer = load_llm(cfg.llm, cfg.device)
        framing = ChatFraming(tokenizer, *framing_settings(cfg))
        prompts = {k: prompt_ids(framing, instructions[k], text[k]) for k in todo}
        refusal = RefusalFilter(cfg.refusal_patterns)
        # Similar prompt lengths in a batch waste less padding.
        todo.sort(key=lambda k: len(prompts[k]))
        t0 = time.time()
        new_records = []
        for i in tqdm(range(0, len(todo), cfg.batch_size), desc=f"teacher {cfg.task} shard {cfg.shard}",
                      disable=None):
            batch = todo[i : i + cfg.batch_size]
            texts, truncated, n_new = generate_greedy(model, tokenizer, [prompts[k] for k in batch],
                                                      cfg.max_new_tokens)
            records = [{"key": k, "text": t, "refused": refusal(t), "truncated": c}
                       for k, t, c in zip(batch, texts, truncated)]
            _append(lines_path, records)
            new_records += records
            stats["utterances"] += len(batch)
            stats["new_tokens"] += n_new
            stats["truncated"] += sum(truncated)
        stats["seconds"] = time.time() - t0
        stats["refused"] = _log_dropped(f"shard {cfg.shard}", new_records)
        logger.info(
            "shard %d: generated %d responses in %.1f s: %.2f utt/s, %.1f new tokens/s (device %s, batch %d); "
            "%d refusal(s) or empty output(s) dropped, %d cut at max_new_tokens %d", cfg.shard, stats["utterances"],
            stats["seconds"], stats["utterances"] / max(stats["seconds"], 1e-9),
            stats["new_tokens"] / max(stats["seconds"], 1e-9), model.device, cfg.batch_size, stats["refused"],
            stats["truncated"], cfg.max_new_tokens,
        )
    shards.finish(cfg.shard, signature, stats=stats)
    return stats


def merge(cfg: TeacherConfig) -> dict[str, str]:
    """Write the task's response file and its ``.truncated`` flags from the shards; every shard must be done."""
    task = teacher_task(cfg)
    dump_dir = Path(cfg.dump_dir)
    shards = Shards(dump_dir / "teacher" / cfg.task, cfg.num_shards)
    (shards.root / MARKER).unlink(missing_ok=True)
    try:
        markers = shards.collect(f"run make_teacher_data --dump_dir {dump_dir} --task {cfg.task} --num_shards "
                                 f"{cfg.num_shards} --shard J for each missing J (it resumes)")
    except ShardError as e:
        raise RuntimeError(str(e)) from None
    records: dict[str, dict] = {}
    for j, marker in enumerate(markers, 1):
        records.update(_read_lines(_lines_file(shards, j), marker["signature"]) or {})
    all_keys = list(teacher_texts(cfg, dump_dir))
    missing = [k for k in all_keys if k not in records]
    if missing:
        raise RuntimeError(f"{shards.dir}: {len(missing)} utterances of {dump_dir / 'text'} have no teacher response "
                           f"(first: {missing[0]}); were the shards run with num_shards={cfg.num_shards}?")
    kept = {k: records[k] for k in sorted(records) if k in set(all_keys) and not records[k]["refused"]}
    merged = {k: r["text"] for k, r in kept.items()}
    write_kv(dump_dir / task.response, merged)
    write_kv(dump_dir / tasks.truncated_file(task.response),
             {k: "true" if r["truncated"] else "false" for k, r in kept.items()})
    refused = _log_dropped(str(dump_dir / task.response), (records[k] for k in all_keys))
    seconds = sum(m["stats"]["seconds"] for m in markers)
    tokens = sum(m["stats"]["new_tokens"] for m in markers)
    truncated = sum(r["truncated"] for r in kept.values())
    totals = {"utterances": len(all_keys), "kept": len(merged), "refused": refused, "truncated": truncated}
    write_marker(shards.root / MARKER, shards.signature(), totals=totals)
    logger.info("%s: wrote %d %s lines (%d cut at max_new_tokens); %d refusal(s)/empty output(s) dropped (%.1f%%); "
                "generation took %.1f s of job time in all, %.1f new tokens/s per job", dump_dir / task.response,
                len(merged), cfg.task, truncated, refused, 100.0 * refused / max(len(all_keys), 1), seconds,
                tokens / max(seconds, 1e-9))
    return merged
