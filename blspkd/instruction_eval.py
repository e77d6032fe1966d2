"""Instruction following from speech (recipe stages 3, 6 and 7): does the speech LLM do what a text instruction asks
about the spoken content, and does it answer a spoken request, as the same LLM does when it reads the transcript?

A YAML config (``--instruction_config`` of egs/TEMPLATE/blspkd.sh) names the instructions::

    num_utts: 20               # utterances per instruction
    max_new_tokens: 48         # of the LLM's text answers (stage 3) and of the speech-input answers (stage 6) alike
    instructions:              # name -> the text instruction placed before the speech
      french: "Translate the following sentence into French."
      question: "Is the following sentence a question? Answer yes or no."
    spoken_request_instruction: null   # the text placed before a spoken request (null: the speech alone)

Text instructions over spoken content: the utterances of a test set (sorted keys) are dealt out in turn to the
instructions, so each gets a disjoint subset of ``num_utts`` utterances (fewer when the set is small). Instruction
``name`` of set ``S`` becomes the dump dir ``<dumpdir>/S_<name>``: a restricted copy of ``<dumpdir>/S`` (features,
transcripts, token counts) plus an ``instruction`` file giving its utterances that instruction. Task ``instruction``
of blspkd/tasks.py then does the rest: stage 3 writes the reference ``response``, the frozen LLM's greedy answer to the
instruction over the transcript as text, framed exactly as the model is decoded; stage 6 decodes the speech with the
same instruction; stage 7 scores BLEU, chrF and the exact-match rate against the reference.

Instruction-tuning data: ``train_num_utts`` utterances of the training set get one of ``train_instructions`` each
(its ``instruction`` file) and stage 3 writes the LLM's answers over their transcripts; a fine-tuning config with a
task ``{kind: instruction}`` then learns those answers from speech. The test instructions must not be among them.

Spoken requests (for example spoken questions): the speech of a test set is itself the request (task
``spoken_instruction``); ``spoken_request_instruction``, when set, is written to the set's ``instruction`` file and
precedes the speech in both the LLM's text-input answer and the speech-input one.

The text-input ceiling of every score is 100: the LLM is frozen and PLoRA changes only the speech positions
(doc/method.md §5), so the model given the transcript as text reproduces the reference exactly.
"""
from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

from blspkd.data.data_dir_ops import load_tables, write_restricted
from blspkd.data.kaldi_dir import SUBSET_FILES, DataDirError, sort_keys, write_kv
from blspkd.utils.config import ConfigError, from_yaml_file
from blspkd.utils.shards import MARKER, read_marker, write_marker

logger = logging.getLogger(__name__)

NAME = re.compile(r"[a-z0-9_]+")
SOURCE_FILES = ("feats.scp", "text", "utt2num_tokens")


@dataclass
class InstructionEvalConfig:
    # utterances per text instruction (disjoint subsets of the test set)
    num_utts: int = 20
    # the longest answer, for the LLM's text-input answers and the speech-input ones alike
    max_new_tokens: int = 48
    # name -> text instruction; names become dump dir suffixes ([a-z0-9_]+)
    instructions: dict[str, str] = field(default_factory=dict)
    # text before a spoken request (null: the speech alone)
    spoken_request_instruction: str | None = None
    # instruction-tuning data: this many utterances of the training set (0: none), spread over it, get one of
    # train_instructions each, in turn; stage 3 writes the LLM's answers (task instruction)
    train_num_utts: int = 0
    train_instructions: list[str] = field(default_factory=list)


def load_config(path: str | Path) -> InstructionEvalConfig:
    cfg = from_yaml_file(InstructionEvalConfig, path)
    if cfg.num_utts < 1 or cfg.max_new_tokens < 1:
        raise ConfigError(f"{path}: num_utts and max_new_tokens must be >= 1")
    for name, text in cfg.instructions.items():
        if not NAME.fullmatch(name):
            raise ConfigError(f"{path}: instruction name '{name}' must be lower-case letters, digits and '_' "
                              "(it names a dump dir)")
        if not isinstance(text, str) or not text.strip() or "\n" in text:
            raise ConfigError(f"{path}: instruction '{name}' must be one non-empty line of text")
    if cfg.spoken_request_instruction is not None and (not cfg.spoken_request_instruction.strip()
                                                       or "\n" in cfg.spoken_request_instruction):
        raise ConfigError(f"{path}: spoken_request_instruction must be one non-empty line, or null")
    if cfg.train_num_utts < 0 or (cfg.train_num_utts > 0) != bool(cfg.train_instructions):
        raise ConfigError(f"{path}: give train_num_utts > 0 and train_instructions together (or neither)")
    for text in cfg.train_instructions:
        if not isinstance(text, str) or not text.strip() or "\n" in text:
            raise ConfigError(f"{path}: every train instruction must be one non-empty line of text")
    held_out = {_key(t): n for n, t in cfg.instructions.items()}
    for text in cfg.train_instructions:
        if _key(text) in held_out:
            raise ConfigError(f"{path}: train instruction {text!r} is the test instruction "
                              f"'{held_out[_key(text)]}': the test measures instructions not seen in training")
    return cfg


def _key(text: str) -> str:
    return " ".join(text.lower().split())


def derived_set_names(cfg: InstructionEvalConfig, sets: list[str]) -> list[str]:
    """The dump dir names of the instruction subsets of ``sets`` (``<set>_<name>``), in config order."""
    return [f"{s}_{name}" for s in sets for name in cfg.instructions]


def deal_out(keys: list[str], names: list[str], num_utts: int) -> dict[str, list[str]]:
    """Key i of the sorted keys goes to instruction i mod len(names), until each has ``num_utts``."""
    subsets: dict[str, list[str]] = {n: [] for n in names}
    for i, key in enumerate(sort_keys(keys)[: num_utts * len(names)]):
        subsets[names[i % len(names)]].append(key)
    return subsets


def write_instruction_sets(cfg: InstructionEvalConfig, dump_dir: str | Path) -> dict[str, Path]:
    """Write ``<dump_dir>_<name>`` for every instruction (see the module docstring); returns name -> dir.

    A dir whose marker records the same source marker, utterances and instruction is left as it is."""
    src = Path(dump_dir)
    if not (src / MARKER).is_file():
        raise DataDirError(f"{src}: not a complete dump dir (no {MARKER}); run stage 2 first")
    tables = load_tables(src)
    if "feats.scp" not in tables:
        raise DataDirError(f"{src}: no feats.scp; run stage 2 first")
    # The subsets copy the source's features, transcripts and token counts: a change to any of them rewrites them.
    source_digest = hashlib.sha256(b"".join((src / n).read_bytes() for n in (MARKER, *SOURCE_FILES)
                                            if (src / n).is_file())).hexdigest()
    names = list(cfg.instructions)
    subsets = deal_out(list(tables["feats.scp"]), names, cfg.num_utts)
    out: dict[str, Path] = {}
    for name in names:
        dst = src.with_name(f"{src.name}_{name}")
        keys = subsets[name]
        if not keys:
            raise DataDirError(f"{src} has {len(tables['feats.scp'])} utterances: too few for {len(names)} "
                               f"instructions; lower num_utts or use fewer instructions")
        signature = {"source": str(src.resolve()), "source_files": source_digest, "keys": keys,
                     "instruction": cfg.instructions[name]}
        marker = read_marker(dst / MARKER)
        if marker is not None and marker["signature"] == signature:
            logger.info("%s: already written with the same utterances and instruction", dst)
            out[name] = dst
            continue
        # Teacher answers and anything else of another instruction or subset must not survive.
        for child in dst.glob("*") if dst.is_dir() else ():
            if child.is_file():
                child.unlink()
        subset_tables = {n: t for n, t in tables.items() if n not in SUBSET_FILES}  # the other tasks' files stay behind
        write_restricted(subset_tables, dst, keys)
        write_kv(dst / "instruction", dict.fromkeys(keys, cfg.instructions[name]))
        write_marker(dst / MARKER, signature, utterances=len(keys))
        logger.info("%s: %d utterances of %s with instruction %r", dst, len(keys), src, cfg.instructions[name])
        out[name] = dst
    return out


def write_spoken_request_instruction(cfg: InstructionEvalConfig, dump_dir: str | Path) -> Path | None:
    """Give every utterance of ``dump_dir`` the config's spoken_request_instruction (its ``instruction`` file);
    without one, remove a previous file so the speech stands alone. Returns the file written, or None."""
    path = Path(dump_dir) / "instruction"
    if cfg.spoken_request_instruction is None:
        if path.is_file():
            path.unlink()
            logger.info("%s: removed (no spoken_request_instruction)", path)
        return None
    keys = list(load_tables(dump_dir)["utt2spk"])
    write_kv(path, dict.fromkeys(keys, cfg.spoken_request_instruction))
    logger.info("%s: %d utterances get %r before the speech", path, len(keys), cfg.spoken_request_instruction)
    return path


def write_train_instructions(cfg: InstructionEvalConfig, dump_dir: str | Path) -> Path:
    """The ``instruction`` file of a training dump dir: ``train_num_utts`` utterances spread evenly over its sorted
    keys, each with the next of ``train_instructions`` in turn (the teacher answers these utterances only)."""
    path = Path(dump_dir) / "instruction"
    keys = sort_keys(load_tables(dump_dir)["utt2spk"])
    n = min(cfg.train_num_utts, len(keys))
    chosen = [keys[i * len(keys) // n] for i in range(n)]
    write_kv(path, {k: cfg.train_instructions[i % len(cfg.train_instructions)] for i, k in enumerate(chosen)})
    logger.info("%s: %d of %d utterances get one of %d training instructions", path, n, len(keys),
                len(cfg.train_instructions))
    return path
