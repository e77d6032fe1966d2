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
