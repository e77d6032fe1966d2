"""Kaldi ark/scp feature I/O: the only module that imports kaldiio.

kaldiio's wheel carries an "evaluation only" licence, so every ark/scp access of the toolkit goes through the three
functions below; swapping the backend means rewriting this file only. Features are float32 matrices (frames x bins).

Paths inside an scp are written as given (Kaldi convention: recipes run from the recipe dir with relative paths such as
``dump/train/shards/feats.1.ark``), so the scp resolves from the directory the writer ran in.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path

import kaldiio
import numpy as np

from blspkd.data.kaldi_dir import DataDirError, read_kv


def load_scp(path: str | Path) -> Mapping[str, np.ndarray]:
    """Lazy mapping key -> float32 matrix read from a Kaldi scp (each matrix read when accessed)."""
    path = Path(path)
    entries = read_kv(path)  # validates keys and lines, naming file:line on errors
    checked: set[str] = set()
    for line_no, (key, value) in enumerate(entries.items(), start=1):
        if not value:
            raise DataDirError(f"{path}: no ark location for key '{key}'")
        ark = value.rsplit(":", 1)[0]
        if ark not in checked:  # one check per ark file (a few shards), not per utterance
            if not Path(ark).is_file():
                raise DataDirError(
                    f"{path}:{line_no}: ark file '{ark}' of key '{key}' not found (looked in {Path.cwd()}). "
                    "Relative paths in an scp are relative to the recipe directory that wrote it: run from there, "
                    "or re-run the feature stage"
                )
            checked.add(ark)
    return kaldiio.load_scp(str(path))


def read_matrix(location: str) -> np.ndarray:
    """One matrix from an scp value such as ``dump/x/feats.1.ark:1234``."""
    return np.asarray(kaldiio.load_mat(location))


def write_feats(ark: str | Path, scp: str | Path, items: Iterable[tuple[str, np.ndarray]]) -> dict[str, int]:
    """Write (key, matrix) pairs to ``ark`` and index them in ``scp`` (both overwritten). Returns key -> number of
    rows."""
    Path(ark).parent.mkdir(parents=True, exist_ok=True)
    Path(scp).parent.mkdir(parents=True, exist_ok=True)
    rows: dict[str, int] = {}
    with kaldiio.WriteHelper(f"ark,scp:{ark},{scp}") as writer:
        for key, mat in items:
            mat = np.asarray(mat, dtype=np.float32)
            if mat.ndim != 2:
                raise ValueError(f"feature matrix for '{key}' must be 2-D (frames x bins), got shape {mat.shape}")
            writer(key, mat)
            rows[key] = mat.shape[0]
    return rows


# ---- float16 matrices (cached encoder outputs, blspkd/data/encoder_cache.py) -----------------------------------------
# Kaldi's binary format has no float16 matrix type (kaldiio would fall back to pickling), so these are raw
# little-endian float16 rows in one data file, indexed by an scp-like file ``key path:byte_offset:rows:cols``.


def write_fp16_matrices(data: str | Path, index: str | Path, items: Iterable[tuple[str, np.ndarray]]) -> dict[str, int]:
    """Write (key, matrix) pairs as float16 to ``data`` and index them in ``index`` (both overwritten). Values outside
    the float16 range are an error (they would become inf). Returns key -> number of rows."""
    Path(data).parent.mkdir(parents=True, exist_ok=True)
    rows: dict[str, int] = {}
    offset = 0
    with open(data, "wb") as out, open(index, "w", encoding="utf-8") as idx:
        for key, mat in items:
            mat = np.asarray(mat)
            if mat.ndim != 2:
                raise ValueError(f"matrix for '{key}' must be 2-D (frames x dims), got shape {mat.shape}")
            half = mat.astype("<f2")
            if not np.isfinite(half).all():
                raise ValueError(f"matrix for '{key}' has values outside the float16 range (max |x| "
                                 f"{float(np.abs(mat).max()):.3g}) or non-finite values; it cannot be stored in fp16")
            out.write(half.tobytes())
            idx.write(f"{key} {data}:{offset}:{mat.shape[0]}:{mat.shape[1]}\n")
            offset += half.nbytes
            rows[key] = mat.shape[0]
    return rows


class Fp16Matrices(Mapping):
    """Lazy mapping key -> float32 matrix over an index written by ``write_fp16_matrices`` (memory-mapped reads)."""

    def __init__(self, index: str | Path):
        self.index = Path(index)
        self._where: dict[str, tuple[str, int, int, int]] = {}
        for line_no, (key, value) in enumerate(read_kv(self.index).items(), start=1):
            try:
                path, offset, rows, cols = value.rsplit(":", 3)
                self._where[key] = (path, int(offset), int(rows), int(cols))
            except ValueError:
                raise DataDirError(f"{self.index}:{line_no}: expected 'key path:offset:rows:cols', got '{value}' "
                                   "(write it with blspkd.data.feats_io.write_fp16_matrices)") from None
        self._maps: dict[str, np.memmap] = {}

    def _map(self, path: str) -> np.memmap:
        if path not in self._maps:
            if not Path(path).is_file():
                raise DataDirError(f"{self.index}: data file '{path}' not found (looked in {Path.cwd()}); relative "
                                   "paths are relative to the recipe directory that wrote the index")
            self._maps[path] = np.memmap(path, dtype="<f2", mode="r")
        return self._maps[path]

    def __getitem__(self, key: str) -> np.ndarray:
        path, offset, rows, cols = self._where[key]
        start = offset // 2
        return np.asarray(self._map(path)[start: start + rows * cols], dtype=np.float32).reshape(rows, cols)

    def __iter__(self):
        return iter(self._where)

    def __len__(self) -> int:
        return len(self._where)
