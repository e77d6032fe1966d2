"""Kaldi ark/scp feature I/O: the only module that imports kaldiio.

kaldiio's wheel carries an "evaluation only" licence, so every ark/scp access of the toolkit goes through the
functions below; swapping the backend means rewriting this file only. Features are float32 matrices (frames x bins).

Reading is typed and does not go through kaldiio: a record must be what ``write_feats`` writes, a binary little-endian
float32 matrix (Kaldi's ``FM`` record), at a ``<ark path>:<byte offset>`` location, with finite values. Anything else is
refused with a DataDirError naming the scp file and line: kaldiio's pickled-object records (which kaldiio's reader
would unpickle, i.e. run code from the data), its NPY/audio records, compressed, double or ASCII matrices, vectors, and
pipe (``cmd |``) or slice (``ark:12[0:9]``) locations, which would run a shell command or read something else.

Paths inside an scp are written as given (Kaldi convention: recipes run from the recipe dir with relative paths such as
``dump/train/shards/feats.1.ark``), so the scp resolves from the directory the writer ran in.
"""
from __future__ import annotations

import os
import struct
from collections.abc import Iterable, Mapping
from pathlib import Path

import kaldiio
import numpy as np

from blspkd.data.kaldi_dir import DataDirError, parse_kv, read_kv

# The record kinds read back: Kaldi's binary float32 matrix, the only kind write_feats writes.
MATRIX_TYPES = {b"FM ": np.dtype("<f4")}
_HEADER = 15  # b"\0B", the 3-byte type token, b"\4" + int32 rows, b"\4" + int32 columns


class FeatsScp(Mapping[str, np.ndarray]):
    """Lazy mapping key -> float32 matrix of a feats.scp (each matrix read, typed and checked when accessed)."""

    def __init__(self, scp: Path, locations: dict[str, tuple[str, int, int]]):
        self.scp = scp
        self.locations = locations  # key -> (ark path, byte offset, scp line number)

    def __getitem__(self, key: str) -> np.ndarray:
        ark, offset, line_no = self.locations[key]
        return _read_record(ark, offset, f"{self.scp}:{line_no}: utterance {key!r}")

    def __iter__(self):
        return iter(self.locations)

    def __len__(self) -> int:
        return len(self.locations)


def _parse_location(value: str, where: str) -> tuple[str, int]:
    """``<ark path>:<byte offset>`` -> (path, offset); anything else (pipes, slices, no offset) is a DataDirError."""
    ark, sep, offset = value.rpartition(":")
    if value.strip().endswith("|") or value.strip().startswith("|"):
        raise DataDirError(f"{where}: location {value!r} is a shell command; feature locations must be "
                           "'<ark path>:<byte offset>' (commands are never run). Fix: re-run stage 2 for this dir")
    if not sep or not ark or not offset.isdigit():
        raise DataDirError(f"{where}: location {value!r} is not '<ark path>:<byte offset>'. Fix: re-run stage 2 for "
                           "this dir")
    return ark, int(offset)


def _describe(head: bytes) -> str:
    if head[:3] == b"PKL":
        return "a pickled Python object (kaldiio 'PKL' record; never unpickled: it could run code)"
    if head[:2] == b"\0B":
        kind = head[2:5].decode("ascii", "replace").strip()
        return f"a binary Kaldi record of kind {kind!r}, not a float32 matrix ('FM')"
    for magic, what in ((b"NPY", "a NumPy array record"), (b"AUDIO", "an audio record"), (b"RIFF", "WAV audio"),
                        (b"fLaC", "FLAC audio")):
        if head.startswith(magic):
            return f"{what}, not a float32 matrix"
    return f"not a binary float32 matrix (the record starts with {head[:8]!r}; ASCII matrices are not read)"


def _read_record(ark: str, offset: int, where: str) -> np.ndarray:
    fix = "Fix: re-run stage 2 for this dir (feature records are written by this toolkit only)"
    try:
        with open(ark, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            f.seek(offset)
            head = f.read(_HEADER)
            dtype = MATRIX_TYPES.get(head[2:5]) if head[:2] == b"\0B" else None
            if dtype is None or len(head) < _HEADER or head[5:6] != b"\4" or head[10:11] != b"\4":
                raise DataDirError(f"{where}: the record at {ark}:{offset} is {_describe(head)}. {fix}")
            rows, cols = struct.unpack("<i", head[6:10])[0], struct.unpack("<i", head[11:15])[0]
            count = rows * cols
            if rows < 1 or cols < 1 or offset + _HEADER + count * dtype.itemsize > size:
                raise DataDirError(f"{where}: the record at {ark}:{offset} claims {rows} x {cols} values but the ark "
                                   f"holds {max(size - offset - _HEADER, 0)} bytes after its header (truncated or "
                                   f"corrupt). {fix}")
            mat = np.fromfile(f, dtype=dtype, count=count).reshape(rows, cols).astype(np.float32, copy=False)
    except OSError as e:
        raise DataDirError(f"{where}: cannot read {ark}: {e.strerror or e}") from None
    bad = int(mat.size - np.isfinite(mat).sum())
    if bad:
        raise DataDirError(f"{where}: {bad} of {mat.size} feature values are not finite (NaN/inf). Fix: re-run stage 2 "
                           "for this dir (it refuses or drops audio with non-finite samples)")
    return mat


def load_scp(path: str | Path) -> FeatsScp:
    """Lazy, typed mapping key -> float32 matrix read from a Kaldi scp (see the module docstring)."""
    path = Path(path)
    read_kv(path)  # validates keys and lines, naming file:line on errors
    locations: dict[str, tuple[str, int, int]] = {}
    checked: set[str] = set()
    for line_no, key, value in parse_kv(path).entries:
        if not value:
            raise DataDirError(f"{path}:{line_no}: no ark location for key {key!r}")
        ark, offset = _parse_location(value, f"{path}:{line_no}")
        if ark not in checked:  # one check per ark file (a few shards), not per utterance
            if not Path(ark).is_file():
                raise DataDirError(
                    f"{path}:{line_no}: ark file '{ark}' of key {key!r} not found (looked in {Path.cwd()}). "
                    "Relative paths in an scp are relative to the recipe directory that wrote it: run from there, "
                    "or re-run the feature stage"
                )
            checked.add(ark)
        locations[key] = (ark, offset, line_no)
    return FeatsScp(path, locations)


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
