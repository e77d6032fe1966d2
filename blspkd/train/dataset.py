"""Training examples from stage-2 dump dirs (features) and stage-3 files (token counts, teacher continuations).

A dump dir is a Kaldi data dir plus ``feats.scp``/``utt2num_frames``; the optional per-utterance files ``instruction``,
``response``, ``continuation``, ``translation`` and ``utt2num_tokens`` add what the tasks need. Each example is one
(utterance, task) pair; the task decides the instruction and the response (``TaskConfig`` in blspkd/train/config.py).
An utterance that lacks what every task needs (e.g. no continuation because stage 3 filtered a refusal) is skipped and
counted in the log, never silently.
"""
from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from blspkd.data.feats_io import load_scp
from blspkd.data.kaldi_dir import read_kv
from blspkd.train.config import TaskConfig
from blspkd.utils.config import ConfigError

logger = logging.getLogger(__name__)

OPTIONAL_FILES = ("instruction", "response", "continuation", "translation", "utt2num_tokens")
# Per task kind: the per-utterance file holding its response (None: no response).
RESPONSE_FILE = {
    "plain": None,
    "transcription": "text",
    "continuation": "continuation",
    "spoken_instruction": "response",
    "translation": "translation",
}
DEFAULT_INSTRUCTION = {
    "transcription": "Repeat the following sentence exactly.",
    "continuation": "Continue the following text in a coherent style: ",
    "translation": "Translate the following speech into {language}.",
}


def task_instruction(task: TaskConfig) -> str | None:
    """The text instruction of a task (None for plain input-KD and for spoken instructions)."""
    if task.kind in ("plain", "spoken_instruction"):
        return task.instruction
    text = task.instruction or DEFAULT_INSTRUCTION[task.kind]
    if "{language}" in text:
        if not task.language:
            raise ConfigError(f"task '{task.kind}': its instruction names {{language}}; set the task's 'language' key")
        text = text.format(language=task.language)
    return text


@dataclass
class DumpDir:
    path: Path
    feats: object  # lazy Mapping[str, np.ndarray]
    text: dict[str, str]
    num_frames: dict[str, int]
    extra: dict[str, dict[str, str]]
    encoder_out: object = None  # lazy Mapping[str, np.ndarray] of cached encoder outputs (data.encoder_cache)

    @classmethod
    def load(cls, path: str | Path) -> DumpDir:
        path = Path(path)
        for name in ("feats.scp", "text", "utt2num_frames"):
            if not (path / name).is_file():
                raise FileNotFoundError(
                    f"{path / name} is missing: {path} is not a complete stage-2 dump dir (run stage 2 of the recipe)"
                )
        text = read_kv(path / "text")
        num_frames = {k: int(v) for k, v in read_kv(path / "utt2num_frames").items()}
        feats = load_scp(path / "feats.scp")
        missing = sorted(set(text) - set(num_frames))
        if missing:
            raise ValueError(
                f"{path}: {len(missing)} utterance(s) of 'text' have no line in 'utt2num_frames' (first: {missing[0]});"
                " "
                "re-run stage 2 on this dir"
            )
        extra = {name: read_kv(path / name) for name in OPTIONAL_FILES if (path / name).is_file()}
        return cls(path, feats, text, num_frames, extra)

    def num_tokens(self) -> dict[str, int]:
        if "utt2num_tokens" not in self.extra:
            raise FileNotFoundError(
                f"{self.path / 'utt2num_tokens'} is missing; data.batch_type=tokens needs it (run stage 3)"
            )
        return {k: int(v) for k, v in self.extra["utt2num_tokens"].items()}


class TrainingData:
    """Map-style dataset over ``(dir index, key, task index)`` ids, with lengths and task lists for the sampler."""

    def __init__(self, dirs: list[str | Path], tasks: list[TaskConfig], batch_type: str = "frames",
                 encoder: dict | None = None):
        """``encoder``: the ``encoder_record`` of the model's frozen speech encoder to read each dir's cached encoder
        outputs (blspkd/data/encoder_cache.py) instead of its log-mel features; None reads the features."""
        if not dirs:
            raise ConfigError("data: no dump dir given (set data.train or data.valid)")
        if not tasks:
            raise ConfigError("data.tasks is empty: give at least one task (kind: plain for input-KD pretraining)")
        self.tasks = tasks
        self.instructions = [task_instruction(t) for t in tasks]
        self.dirs = [DumpDir.load(d) for d in dirs]
        if encoder is not None:
            from blspkd.data.encoder_cache import load_encoder_outputs

            for d in self.dirs:
                d.encoder_out = load_encoder_outputs(d.path, encoder)
        self.lengths: list[dict[str, int]] = []
        self.eligible: list[dict[str, list[int]]] = []
        for d in self.dirs:
            lens = d.num_frames if batch_type == "frames" else d.num_tokens()
            elig: dict[str, list[int]] = {}
            skipped: Counter[str] = Counter()
            for key, text in d.text.items():
                if key not in lens:
                    skipped[f"no {'utt2num_frames' if batch_type == 'frames' else 'utt2num_tokens'} entry"] += 1
                    continue
                if not text.strip():
                    skipped["empty transcript"] += 1
                    continue
                if d.encoder_out is not None and key not in d.encoder_out:
                    skipped["no cached encoder output (encoder_out.scp)"] += 1
                    continue
                ok = [i for i, t in enumerate(tasks) if self._has_inputs(d, key, t)]
                if not ok:
                    skipped["no file for any task (" + ", ".join(sorted({t.kind for t in tasks})) + ")"] += 1
                    continue
                elig[key] = ok
            if skipped:
                logger.warning("%s: skipped %d of %d utterances: %s", d.path, sum(skipped.values()), len(d.text),
                               ", ".join(f"{n} x {why}" for why, n in skipped.items()))
            if not elig:
                raise ValueError(f"{d.path}: no usable utterance for tasks {[t.kind for t in tasks]}")
            self.lengths.append({k: lens[k] for k in elig})
            self.eligible.append(elig)
        logger.info("data: %d utterances from %d dir(s), tasks %s", sum(len(e) for e in self.eligible), len(self.dirs),
                    [t.kind for t in tasks])

    @staticmethod
    def _has_inputs(d: DumpDir, key: str, task: TaskConfig) -> bool:
        name = RESPONSE_FILE[task.kind]
        if name is not None and name != "text":
            value = d.extra.get(name, {}).get(key)
            if value is None or not value.strip():
                return False
        return True

    def __getitem__(self, example: tuple[int, str, int]) -> dict:
        di, key, ti = example
        d = self.dirs[di]
        task = self.tasks[ti]
        name, source = ("feats", d.feats) if d.encoder_out is None else ("encoder_out", d.encoder_out)
        feats = np.array(source[key], dtype=np.float32)  # a writable copy (kaldiio may hand out read-only views)
        if not np.isfinite(feats).all():
            raise ValueError(
                f"{d.path / ('feats.scp' if name == 'feats' else 'encoder_out.scp')}: utterance {key} has non-finite "
                "feature values (NaN/inf); re-run stage 2 for this dir or remove the utterance "
                "(utils/subset_data_dir.sh / fix_data_dir.sh)"
            )
        item = {"key": key, name: feats, "text": d.text[key]}
        instruction = self.instructions[ti]
        if task.kind == "spoken_instruction" and instruction is None:
            instruction = d.extra.get("instruction", {}).get(key)
        if instruction:
            item["instruction"] = instruction
        name = RESPONSE_FILE[task.kind]
        if name == "text":
            item["response"] = d.text[key]
        elif name is not None:
            item["response"] = d.extra[name][key]
        return item

    def all_examples(self, task_index: int = 0) -> list[tuple[int, str, int]]:
        """Every utterance once, in a fixed order (validation), with the first eligible task from ``task_index`` on."""
        out = []
        for di, elig in enumerate(self.eligible):
            for key in sorted(elig):
                ok = elig[key]
                out.append((di, key, task_index if task_index in ok else ok[0]))
        return out
