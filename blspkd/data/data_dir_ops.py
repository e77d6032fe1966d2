"""Operations on Kaldi data dirs with Kaldi semantics: fix, subset, combine and split.

All of them go through one pair of helpers: ``load_tables`` reads every known file of a dir into dicts, and
``write_restricted`` writes a dir holding only a given set of utterances (recording files restricted to the recordings
those utterances use, speaker files to their speakers, ``spk2utt`` regenerated from ``utt2spk``).
"""
from __future__ import annotations

import bisect
import logging
import random
import shutil
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from blspkd.data.kaldi_dir import (
    INT_FILES,
    NEEDS_A_HUMAN,
    RECO_FILES,
    SPK_FILES,
    UTT_FILES,
    DataDirError,
    _parse_segment,
    fix_hint,
    parse_kv,
    read_kv,
    sort_keys,
    utt2spk_to_spk2utt,
    utterance_files,
    write_kv,
)

logger = logging.getLogger(__name__)
Tables = dict[str, dict[str, str]]


def load_tables(data_dir: str | Path) -> Tables:
    """Every known file of the dir (strictly read) as name -> {key: value}; ``spk2utt`` is left out (it is derived)."""
    d = Path(data_dir)
    if not d.is_dir():
        raise DataDirError(f"{d}: data dir not found")
    if not (d / "utt2spk").is_file():
        raise DataDirError(f"{d}/utt2spk: file not found. Fix: write utt2spk in local/data.sh")
    return {n: read_kv(d / n) for n in (*UTT_FILES, *RECO_FILES, *SPK_FILES) if n != "spk2utt" and (d / n).is_file()}


def _recordings_of(tables: Tables, utts: Iterable[str]) -> set[str]:
    if "segments" in tables:
        return {tables["segments"][u].split()[0] for u in utts}
    return set(utts)


def write_restricted(tables: Tables, out_dir: str | Path, utts: Iterable[str]) -> int:
    """Write ``tables`` into ``out_dir`` keeping only ``utts``; returns the number of utterances written."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    keep = set(utts) & set(tables["utt2spk"])
    recos = _recordings_of(tables, keep)
    utt2spk = {u: s for u, s in tables["utt2spk"].items() if u in keep}
    speakers = set(utt2spk.values())
    for name, table in tables.items():
        if name in UTT_FILES or (name == "wav.scp" and "segments" not in tables):
            wanted = keep
        elif name in RECO_FILES:
            wanted = recos
        else:
            wanted = speakers
        write_kv(out / name, {k: v for k, v in table.items() if k in wanted})
    write_kv(out / "spk2utt", utt2spk_to_spk2utt(utt2spk))
    return len(keep)


# ---------------------------------------------------------------------------------------------------------------- fix


@dataclass
class FixReport:
    total: int = 0
    kept: int = 0
    dropped: Counter = field(default_factory=Counter)  # reason -> number of utterances
    malformed_lines: Counter = field(default_factory=Counter)  # file -> number of lines dropped
    dropped_recordings: int = 0

    def summary(self, data_dir: str | Path) -> str:
        lines = [f"{data_dir}: kept {self.kept} of {self.total} utterances"]
        lines += [f"  dropped {n}: {reason}" for reason, n in sorted(self.dropped.items())]
        lines += [f"  removed {n} malformed line(s) from {name}" for name, n in sorted(self.malformed_lines.items())]
        if self.dropped_recordings:
            lines.append(f"  removed {self.dropped_recordings} recording(s) no kept segment uses")
        return "\n".join(lines)


def fix_data_dir(data_dir: str | Path) -> FixReport:
    """Make a data dir valid the Kaldi way: sort, drop utterances not in every per-utterance file or otherwise unusable,
    regenerate spk2utt. Originals go to ``<dir>/.backup/``. Returns counts of what was kept and dropped, per reason."""
    d = Path(data_dir)
    if not (d / "utt2spk").is_file():
        raise DataDirError(f"{d}/utt2spk: file not found; fix_data_dir needs utt2spk (write it in local/data.sh)")
    report = FixReport()
    names = [n for n in (*UTT_FILES, *RECO_FILES, *SPK_FILES) if (d / n).is_file()]
    tables: Tables = {}
    conflicts: dict[str, set[str]] = {}
    for name in names:
        kv = parse_kv(d / name)
        human = [(n, msg) for n, msg in kv.problems if msg.startswith(NEEDS_A_HUMAN)]
        if human:  # dropping these lines would drop their utterances; a re-encoding or a one-character edit keeps them
            n, msg = human[0]
            fix = (f"re-encode the file (e.g. iconv -f latin1 -t utf-8 {d / name})" if msg.startswith("not valid")
                   else "remove the character (or correct the script that wrote the file), then run fix_data_dir")
            raise DataDirError(f"{d / name}:{n}: {msg} ({len(human)} such line(s)); fix_data_dir does not drop "
                               f"utterances for this. Fix: {fix}")
        report.malformed_lines[name] += sum(1 for n, msg in kv.problems if n and not msg.startswith("Windows"))
        table: dict[str, str] = {}
        for _, key, value in kv.entries:
            if key in table and table[key] != value:
                conflicts.setdefault(name, set()).add(key)
            table.setdefault(key, value)
        tables[name] = table
    report.malformed_lines = +report.malformed_lines

    per_utt = utterance_files(d)
    candidates = set().union(*(tables[n] for n in per_utt))
    report.total = len(candidates)
    kept = []
    for utt in sort_keys(candidates):
        reason = _drop_reason(utt, tables, per_utt, conflicts)
        if reason:
            report.dropped[reason] += 1
        else:
            kept.append(utt)
    report.kept = len(kept)
    if not kept:  # as Kaldi's fix_data_dir.sh: nothing is usable, so nothing is changed
        raise DataDirError(f"{report.summary(d)}\nno utterance would remain: {d} is left unchanged. Fix: correct the "
                           "files (utils/validate_data_dir.sh names every problem)")
    if "segments" in tables and "wav.scp" in tables:
        report.dropped_recordings = len(set(tables["wav.scp"]) - _recordings_of(tables, kept))

    backup = d / ".backup"
    backup.mkdir(exist_ok=True)
    for name in names:
        shutil.copy2(d / name, backup / name)
    tables.pop("spk2utt", None)
    write_restricted(tables, d, kept)
    logger.info(report.summary(d))
    return report


def _drop_reason(utt: str, tables: Tables, per_utt: list[str], conflicts: dict[str, set[str]]) -> str | None:
    for name in per_utt:
        if utt not in tables[name]:
            return f"not in {name}"
        if utt in conflicts.get(name, ()):
            return f"conflicting duplicate lines in {name}"
    if not tables.get("text", {utt: "x"})[utt].strip():
        return "empty transcript in text"
    for name in ("instruction", "response", "continuation", "translation", "utt2lang"):
        if name in tables and not tables[name][utt].strip():
            return f"empty value in {name}"
    if len(tables["utt2spk"][utt].split()) != 1:
        return "utt2spk value is not one speaker id"
    for name in INT_FILES:
        if name in tables and not (tables[name][utt].isdigit() and int(tables[name][utt]) > 0):
            return f"value in {name} is not a positive integer"
    if "segments" in tables:
        seg = _parse_segment(tables["segments"][utt])
        if isinstance(seg, str):
            return "malformed segments line or times"
        if seg[0] not in tables.get("wav.scp", {}):
            return "recording of segments not in wav.scp"
        if seg[0] in conflicts.get("wav.scp", ()):
            return "conflicting duplicate lines in wav.scp"
    return None


# ------------------------------------------------------------------------------------------------------------- subset


def subset_data_dir(
    src: str | Path,
    dst: str | Path,
    first: int | None = None,
    last: int | None = None,
    utt_list: Iterable[str] | None = None,
    spk_list: Iterable[str] | None = None,
    random_n: int | None = None,
    seed: int = 0,
) -> list[str]:
    """Copy the utterances chosen by exactly one selector (first N, last N, listed utterances, listed speakers'
    utterances, N random with a seed) from ``src`` to ``dst``. Returns the kept utterance ids (sorted)."""
    chosen = [x is not None for x in (first, last, utt_list, spk_list, random_n)]
    if sum(chosen) != 1:
        raise DataDirError("subset: give exactly one of --first, --last, --utt_list, --spk_list, --random")
    tables = load_tables(src)
    utts = sort_keys(tables["utt2spk"])
    for n, opt in ((first, "--first"), (last, "--last"), (random_n, "--random")):
        if n is not None and not 0 < n <= len(utts):
            raise DataDirError(f"subset {opt} {n}: {src} has {len(utts)} utterances; choose 1..{len(utts)}")
    if first is not None:
        keep = utts[:first]
    elif last is not None:
        keep = utts[-last:]
    elif random_n is not None:
        keep = sort_keys(random.Random(seed).sample(utts, random_n))
    elif utt_list is not None:
        wanted = set(utt_list)
        keep = [u for u in utts if u in wanted]
        if len(keep) < len(wanted):
            logger.warning("subset: %d of %d listed utterances are not in %s",
                           len(wanted) - len(keep), len(wanted), src)
    else:
        speakers = set(spk_list)
        keep = [u for u in utts if tables["utt2spk"][u] in speakers]
        missing = speakers - set(tables["utt2spk"].values())
        if missing:
            logger.warning("subset: %d of %d listed speakers are not in %s", len(missing), len(speakers), src)
    if not keep:
        raise DataDirError(f"subset: no utterance of {src} was selected")
    write_restricted(tables, dst, keep)
    logger.info("subset: wrote %d of %d utterances of %s to %s", len(keep), len(utts), src, dst)
    return keep


# ------------------------------------------------------------------------------------------------------------ combine


def combine_data(dst: str | Path, srcs: list[str | Path]) -> int:
    """Union of several data dirs into ``dst``. An utterance (or speaker-file/recording key with a different value)
    found in two sources is an error naming both. Files that only some sources have are skipped with a warning, except
    ``segments``, which must be in all or none."""
    if not srcs:
        raise DataDirError("combine: no source data dir given")
    loaded = [(Path(s), load_tables(s)) for s in srcs]
    with_segments = [str(s) for s, t in loaded if "segments" in t]
    if with_segments and len(with_segments) != len(loaded):
        without = [str(s) for s, t in loaded if "segments" not in t]
        raise DataDirError(
            f"combine: {', '.join(with_segments)} have segments but {', '.join(without)} do not. Fix: give the latter "
            "a segments file covering whole recordings (<utt> <utt> 0 <duration>)"
        )
    names = sort_keys(set().union(*(t.keys() for _, t in loaded)))
    combined: Tables = {}
    for name in names:
        have = [(s, t[name]) for s, t in loaded if name in t]
        if len(have) != len(loaded):
            logger.warning("combine: skipping %s: only %d of %d sources have it", name, len(have), len(loaded))
            continue
        merged: dict[str, str] = {}
        origin: dict[str, Path] = {}
        shared_ok = name in RECO_FILES and bool(with_segments) or name in SPK_FILES
        for src, table in have:
            for key, value in table.items():
                if key in merged and not (shared_ok and merged[key] == value):
                    raise DataDirError(
                        f"combine: key {key!r} is in both {origin[key] / name} and {src / name}. Fix: make ids unique "
                        "across corpora (e.g. prefix them with the corpus name) or drop one of the sources"
                    )
                merged[key] = value
                origin.setdefault(key, src)
        combined[name] = merged
    n = write_restricted(combined, dst, combined["utt2spk"])
    logger.info("combine: wrote %d utterances from %d sources to %s", n, len(loaded), dst)
    return n


# -------------------------------------------------------------------------------------------------------------- split


def split_utterances(utt2spk: dict[str, str], num_shards: int, by_speaker: bool = True) -> list[list[str]]:
    """Deterministic split of the (sorted) utterances into ``num_shards`` contiguous, non-empty groups of near-equal
    size. With ``by_speaker`` a speaker's utterances stay in one shard (as Kaldi's split_data.sh); with fewer speakers
    than shards it falls back to a per-utterance split and logs so."""
    utts = sort_keys(utt2spk)
    if num_shards < 1:
        raise DataDirError(f"split: the number of shards must be >= 1, got {num_shards}")
    if num_shards > len(utts):
        raise DataDirError(f"split: cannot split {len(utts)} utterances into {num_shards} shards; use fewer jobs")
    if by_speaker:
        spk2utts: dict[str, list[str]] = {}
        for u in utts:
            spk2utts.setdefault(utt2spk[u], []).append(u)
        speakers = sort_keys(spk2utts)
        if len(speakers) >= num_shards:
            return _balanced_groups([spk2utts[s] for s in speakers], num_shards)
        logger.warning("split: %d speakers < %d shards; splitting by utterance instead", len(speakers), num_shards)
    return _balanced_groups([[u] for u in utts], num_shards)


def _balanced_groups(blocks: list[list[str]], n: int) -> list[list[str]]:
    """Cut a sequence of blocks into n contiguous non-empty groups whose sizes are as close as possible to total/n."""
    sizes = [len(b) for b in blocks]
    total = sum(sizes)
    cum = [0]
    for s in sizes:
        cum.append(cum[-1] + s)
    cuts = [0]
    for j in range(1, n):
        lo, hi = cuts[-1] + 1, len(blocks) - (n - j)  # leave at least one block for every later group
        target = total * j / n
        i = bisect.bisect_left(cum, target)  # cum is increasing: the nearest cut is at i-1 or i (clamped)
        near = {min(max(k, lo), hi) for k in (i - 1, i)}
        cuts.append(min(near, key=lambda k: (abs(cum[k] - target), k)))
    cuts.append(len(blocks))
    return [[u for b in blocks[cuts[j]:cuts[j + 1]] for u in b] for j in range(n)]


def split_data_dir(data_dir: str | Path, num_shards: int, by_speaker: bool = True) -> list[Path]:
    """Write ``<dir>/split<N>/<j>`` (or ``split<N>utt/<j>`` for a per-utterance split), j = 1..N, each a complete data
    dir."""
    d = Path(data_dir)
    tables = load_tables(d)
    groups = split_utterances(tables["utt2spk"], num_shards, by_speaker)
    base = d / (f"split{num_shards}" if by_speaker else f"split{num_shards}utt")
    out = []
    for j, group in enumerate(groups, start=1):
        write_restricted(tables, base / str(j), group)
        out.append(base / str(j))
    logger.info("split: %s into %d shards of %d..%d utterances under %s", d, num_shards,
                min(map(len, groups)), max(map(len, groups)), base)
    return out


__all__ = [
    "FixReport", "combine_data", "fix_data_dir", "fix_hint", "load_tables", "split_data_dir", "split_utterances",
    "subset_data_dir", "write_restricted",
]
