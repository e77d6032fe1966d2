"""The shard protocol of the sharded stages: features (2), teacher data (3) and decoding (6).

* Split: shard J (1-based) of N is the J-th contiguous block of the sorted keys, as Kaldi's ``split_scp.pl`` cuts a
  sorted list; the same keys give the same shards in every stage and on every machine.
* Markers: finished work leaves a JSON marker whose ``signature`` holds the settings that produced it (icefall's
  ``.completed`` style): ``<dir>/shards/.completed.J`` for shard J, ``<dir>/.completed`` for the merged output, and
  ``<dir>/.completed.stage<N>`` for a recipe stage (egs/TEMPLATE/blspkd.sh). A marker is written last and atomically,
  so a killed job leaves none; work is reused only when its marker's signature equals the current one.
* Merge: ``--merge true`` after every shard job; it checks that all N shard markers exist with one signature, then
  writes the merged output and its ``.completed`` last.
"""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from blspkd.utils.config import ConfigError

logger = logging.getLogger(__name__)

MARKER = ".completed"


class ShardError(RuntimeError):
    """Shards that are missing or were written with other settings (the message says which and what to run)."""


def shard_keys(keys, shard: int, num_shards: int) -> list[str]:
    """Contiguous block ``shard`` (1-based) of ``num_shards`` of the sorted keys."""
    if not 1 <= shard <= num_shards:
        raise ConfigError(f"shard must be in 1..{num_shards} (num_shards), got {shard}")
    keys = sorted(keys)
    n = len(keys)
    return keys[(shard - 1) * n // num_shards: shard * n // num_shards]


def write_marker(path: str | Path, signature: dict, **info) -> None:
    """Write the JSON marker ``{"signature": ..., **info}`` atomically (tmp file + rename)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps({"signature": signature, **info}, indent=1, ensure_ascii=False) + "\n",
                   encoding="utf-8")
    os.replace(tmp, path)


def read_marker(path: str | Path) -> dict | None:
    """The marker at ``path``, or None when there is none (or only a torn one)."""
    try:
        marker = json.loads(Path(path).read_text(encoding="utf-8"))
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    return marker if isinstance(marker, dict) and "signature" in marker else None


def matching_marker(path: str | Path, signature: dict) -> dict | None:
    """The marker at ``path`` if it was written with ``signature``, else None."""
    marker = read_marker(path)
    return marker if marker is not None and marker["signature"] == signature else None


class Shards:
    """The shard files and markers of one sharded job under ``<root>/shards``."""

    def __init__(self, root: str | Path, num_shards: int):
        if num_shards < 1:
            raise ConfigError(f"num_shards must be >= 1, got {num_shards}")
        self.root = Path(root)
        self.dir = self.root / "shards"
        self.num_shards = num_shards

    def file(self, name: str, shard: int) -> Path:
        return self.dir / f"{name}.{shard}"

    def marker(self, shard: int) -> Path:
        return self.dir / f"{MARKER}.{shard}"

    def done(self, shard: int, signature: dict) -> dict | None:
        """Shard ``shard``'s marker if it is finished with ``signature`` (then it is skipped), else None; a marker
        of other settings is removed, so the shard is redone."""
        marker = read_marker(self.marker(shard))
        if marker is not None and marker["signature"] != signature:
            logger.info("shard %d/%d: settings or inputs changed since %s was written; redoing it", shard,
                        self.num_shards, self.marker(shard))
            self.marker(shard).unlink()
            return None
        return marker

    def finish(self, shard: int, signature: dict, **info) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        write_marker(self.marker(shard), signature, **info)

    def collect(self, fix: str) -> list[dict]:
        """The markers of all shards, checked to be complete and written with one signature (keys that start with
        ``shard_``, e.g. a digest of the shard's own inputs, may differ). ``fix``: how to produce a missing shard."""
        markers = [read_marker(self.marker(j)) for j in range(1, self.num_shards + 1)]
        missing = [j for j, m in enumerate(markers, 1) if m is None]
        if missing:
            raise ShardError(f"{self.dir}: shard(s) {', '.join(map(str, missing))} of {self.num_shards} are not "
                             f"done (no {MARKER}.J marker). Fix: {fix}, then merge again")
        common = [{k: v for k, v in m["signature"].items() if not k.startswith("shard_")} for m in markers]
        for j, sig in enumerate(common[1:], 2):
            if sig != common[0]:
                diff = sorted(k for k in set(sig) | set(common[0]) if sig.get(k) != common[0].get(k))
                raise ShardError(f"{self.marker(j)}: shard {j} was written with other settings than shard 1 ({diff});"
                                 f" remove {self.dir} and run every shard again")
        if common[0].get("num_shards", self.num_shards) != self.num_shards:
            raise ShardError(f"{self.dir}: the markers were written for num_shards {common[0]['num_shards']}, not "
                             f"{self.num_shards}; run every shard again with --num_shards {self.num_shards}")
        return markers

    def signature(self) -> dict:
        """The common signature of the (collected) shards, e.g. for the merged output's marker."""
        sig = read_marker(self.marker(1))["signature"]
        return {k: v for k, v in sig.items() if not k.startswith("shard_")}
