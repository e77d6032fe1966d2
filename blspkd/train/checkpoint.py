"""Checkpoints that resume a run exactly: written atomically, the last K kept, loaded without pickle.

Layout of ``<exp_dir>/checkpoints/step_<N>/``:
  trainable.safetensors  the trainable weights (adapter, PLoRA, an unfrozen encoder), full (unsharded) tensors
  state.pt               optimizer (keyed by parameter name), scheduler, step, epoch and batch position, RNG states;
                         only tensors and plain Python values, read back with ``torch.load(weights_only=True)``
A checkpoint is first written to ``step_<N>.tmp`` and renamed when complete, so a job killed while saving leaves either
the previous checkpoint or the new one, never a half-written directory that resume would pick up.
"""
from __future__ import annotations

import logging
import random
import re
import shutil
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

logger = logging.getLogger(__name__)

_STEP_DIR = re.compile(r"^step_(\d+)$")


def rng_state() -> dict:
    """RNG states of python, numpy, torch (CPU and CUDA) as tensors and plain values (weights_only-loadable)."""
    np_state = np.random.get_state()
    state = {
        "python": list(random.getstate()[1]),
        "python_pos": random.getstate()[2],
        "numpy_keys": torch.from_numpy(np_state[1].astype(np.int64)),
        "numpy_pos": int(np_state[2]),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate((3, tuple(state["python"]), state["python_pos"]))
    np.random.set_state(("MT19937", state["numpy_keys"].numpy().astype(np.uint32), state["numpy_pos"], 0, 0.0))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def checkpoint_dirs(exp_dir: str | Path) -> list[Path]:
    """Complete checkpoints of ``exp_dir``, oldest first."""
    root = Path(exp_dir) / "checkpoints"
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if (m := _STEP_DIR.match(p.name)) and p.is_dir()]
    return [p for _, p in sorted(found)]


def latest_checkpoint(exp_dir: str | Path) -> Path | None:
    dirs = checkpoint_dirs(exp_dir)
    return dirs[-1] if dirs else None


def save_checkpoint(exp_dir: str | Path, step: int, weights: dict[str, torch.Tensor], state: dict, keep: int) -> Path:
    """Write checkpoint ``step`` atomically and delete all but the newest ``keep``. Call on rank 0 only."""
    root = Path(exp_dir) / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step_{step:08d}"
    tmp = root / f"step_{step:08d}.tmp"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    save_file({k: v.detach().contiguous().cpu() for k, v in weights.items()}, str(tmp / "trainable.safetensors"))
    torch.save(state, tmp / "state.pt")
    if final.exists():  # the same step saved again (e.g. the end of a resumed run that had just checkpointed)
        shutil.rmtree(final)
    tmp.rename(final)
    for old in checkpoint_dirs(exp_dir)[: -max(keep, 1)]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def load_checkpoint(path: str | Path) -> tuple[dict[str, torch.Tensor], dict]:
    path = Path(path)
    try:
        weights = load_file(str(path / "trainable.safetensors"))
        state = torch.load(path / "state.pt", map_location="cpu", weights_only=True)
    except Exception as e:  # a corrupt file: say which and what to do rather than a deep traceback
        raise RuntimeError(
            f"cannot read checkpoint {path} ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); "
            "it is corrupt: delete that directory to resume from the previous one"
        ) from e
    logger.info("loaded checkpoint %s (step %d)", path, state["step"])
    return weights, state
