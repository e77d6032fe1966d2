"""Training examples from stage-2 dump dirs (features) and stage-3 files (token counts, teacher continuations).

A dump dir is a Kaldi data dir plus ``feats.scp``/``utt2num_frames``; the optional per-utterance files ``instruction``,
``utt2num_tokens`` and the tasks' response files (``continuation``, ``translation``, ``response``, ...) add what the
tasks need. Each example is one (utterance, task) pair; the task registry (blspkd/tasks.py) decides the instruction and
the response.
An utterance that lacks what every task needs (e.g. no continuation because stage 3 filtered a refusal) is skipped and
counted in the log, never silently.

A raw dump dir (stage 2 with ``--feats_type raw``: ``wav.scp`` + ``utt2num_samples`` instead of ``feats.scp``) gives
examples with ``speech`` (16 kHz float32 samples) instead of ``feats``; the trainer computes their log-mel on its
device (blspkd/data/audio_dump.py).
"""
from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from blspkd.data.audio_dump import RawAudio, is_raw_dump
from blspkd.data.feats_io import FeatsScp, load_scp
from blspkd.data.kaldi_dir import DataDirError, read_counts, read_kv
from blspkd.tasks import TASKS, Task, fixed_instruction, get_task, truncated_file
from blspkd.train.config import TaskConfig
from blspkd.utils.config import ConfigError

logger = logging.getLogger(__name__)
# The dump-dir file each kind of example input comes from (raw audio, log-mel features, cached encoder outputs).
SOURCE_FILE = {"speech": "wav.scp", "feats": "feats.scp", "encoder_out": "encoder_out.scp"}



def optional_files() -> list[str]:
    """Per-utterance files the registered tasks may read, and the teacher's truncation flags of their responses."""
    names = ["instruction", "utt2num_tokens"]
    for t in TASKS.values():
        names += [n for n in (t.response, t.reference) if n not in (None, "text")]
        names += [truncated_file(t.response)] if t.teacher else []
    return list(dict.fromkeys(names))


def task_instruction(task: TaskConfig) -> str | None:
    """The text instruction every example of ``task`` gets (None: per utterance, or the model's default)."""
    return fixed_instruction(task.kind, task.instruction, language=task.language)


@dataclass
class DumpDir:
    path: Path
    feats: FeatsScp | RawAudio  # lazy key -> float32 matrix (or waveform of a raw dump)
    text: dict[str, str]
    num_frames: dict[str, int]
    extra: dict[str, dict[str, str]]
    encoder_out: object = None  # lazy Mapping[str, np.ndarray] of cached encoder outputs (data.encoder_cache)
    raw: bool = False  # feats maps to waveforms (a --feats_type raw dump dir)

    @classmethod
    def load(cls, path: str | Path) -> DumpDir:
        path = Path(path)
        raw = is_raw_dump(path)
        for name in ("wav.scp" if raw else "feats.scp", "text", "utt2num_frames"):
            if not (path / name).is_file():
                raise FileNotFoundError(
                    f"{path / name} is missing: {path} is not a complete stage-2 dump dir (run stage 2 of the recipe)"
                )
        text = read_kv(path / "text")
        num_frames = read_counts(path / "utt2num_frames")
        feats = RawAudio(path) if raw else load_scp(path / "feats.scp")
        missing = sorted(set(text) - set(num_frames))
        if missing:
            raise DataDirError(
                f"{path}: {len(missing)} utterance(s) of 'text' have no line in 'utt2num_frames' (first: {missing[0]});"
                " "
                "re-run stage 2 on this dir"
            )
        no_feats = sorted(set(text) - set(feats))
        if no_feats:
            raise DataDirError(f"{path}: {len(no_feats)} utterance(s) of 'text' have no line in 'feats.scp' (first: "
                               f"{no_feats[0]!r}); re-run stage 2 on this dir")
        extra = {name: read_kv(path / name) for name in optional_files() if (path / name).is_file()}
        return cls(path, feats, text, num_frames, extra, raw=raw)

    def num_tokens(self) -> dict[str, int]:
        if "utt2num_tokens" not in self.extra:
            raise FileNotFoundError(
                f"{self.path / 'utt2num_tokens'} is missing; data.batch_type=tokens needs it (run stage 3)"
            )
        return read_counts(self.path / "utt2num_tokens")


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
        self.registry = [get_task(t.kind) for t in tasks]
        self.instructions = [task_instruction(t) for t in tasks]
        self.dirs = [DumpDir.load(d) for d in dirs]
        if len({d.raw for d in self.dirs}) > 1:  # a batch holds either features or waveforms
            raise ConfigError("data: dump dirs of both feature types in one set: "
                              + ", ".join(f"{d.path} ({'raw' if d.raw else 'fbank'})" for d in self.dirs)
                              + "; run stage 2 of every dir with the same --feats_type")
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
                ok = [i for i, t in enumerate(self.registry) if self._has_inputs(d, key, t, self.instructions[i])]
                if not ok:
                    skipped["no file for any task (" + ", ".join(sorted({t.kind for t in tasks})) + ")"] += 1
                    continue
                elig[key] = ok
            if skipped:
                logger.warning("%s: skipped %d of %d utterances: %s", d.path, sum(skipped.values()), len(d.text),
                               ", ".join(f"{n} x {why}" for why, n in skipped.items()))
            if not elig:
                raise DataDirError(f"{d.path}: no usable utterance for tasks {[t.kind for t in tasks]}")
            self.lengths.append({k: lens[k] for k in elig})
            self.eligible.append(elig)
        logger.info("data: %d utterances from %d dir(s), tasks %s", sum(len(e) for e in self.eligible), len(self.dirs),
                    [t.kind for t in tasks])

    @staticmethod
    def _has_inputs(d: DumpDir, key: str, task: Task, instruction: str | None) -> bool:
        if task.response not in (None, "text") and not d.extra.get(task.response, {}).get(key, "").strip():
            return False
        if task.utterance_instruction == "required" and instruction is None:
            return bool(d.extra.get("instruction", {}).get(key, "").strip())
        return True

    def __getitem__(self, example: tuple[int, str, int]) -> dict:
        di, key, ti = example
        d = self.dirs[di]
        task = self.registry[ti]
        name, source = ("speech" if d.raw else "feats", d.feats) if d.encoder_out is None else ("encoder_out",
                                                                                              d.encoder_out)
        feats = np.array(source[key], dtype=np.float32)  # a writable copy (kaldiio may hand out read-only views)
        if not np.isfinite(feats).all():
            raise DataDirError(
                f"{d.path / SOURCE_FILE[name]}: utterance {key} has non-finite feature values (NaN/inf); re-run "
                "stage 2 for this dir or remove the utterance (utils/subset_data_dir.sh / fix_data_dir.sh)"
            )
        item = {"key": key, name: feats, "text": d.text[key]}
        instruction = self.instructions[ti]
        if instruction is None and task.utterance_instruction != "none":
            instruction = d.extra.get("instruction", {}).get(key)
        if instruction:
            item["instruction"] = instruction
        if task.response == "text":
            item["response"] = d.text[key]
        elif task.response is not None:
            item["response"] = d.extra[task.response][key]
            # A teacher answer cut at max_new_tokens is no finished turn: the collator leaves its end of turn off.
            if d.extra.get(truncated_file(task.response), {}).get(key) == "true":
                item["response_truncated"] = True
        return item

    def all_examples(self, task_index: int = 0) -> list[tuple[int, str, int]]:
        """Every utterance once, in a fixed order (validation), with the first eligible task from ``task_index`` on."""
        out = []
        for di, elig in enumerate(self.eligible):
            for key in sorted(elig):
                ok = elig[key]
                out.append((di, key, task_index if task_index in ok else ok[0]))
        return out
