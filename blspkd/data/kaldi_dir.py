"""Kaldi data directories: reading, writing and validating ``<key> <value>`` files.

A data dir holds ``wav.scp``, ``text``, ``utt2spk``, ``spk2utt`` and optionally ``segments`` and the per-utterance
files of this toolkit (``instruction``, ``response``, ``continuation``, ``utt2num_tokens``, ``utt2lang``,
``translation``) plus, after feature extraction, ``feats.scp`` and ``utt2num_frames``. Every file has one
``<key> <value>`` line per entry, keys unique, lines sorted in byte order (what ``LC_ALL=C sort`` gives; Python's
``sorted`` on ``str`` gives the same order because UTF-8 preserves code-point order), UTF-8, each line
newline-terminated.

Lines are split on ASCII blanks (space, tab), as Kaldi's tools split them. A key holding an invisible character (a
UTF-8 byte order mark, a no-break space, a zero-width space, a control character) and a line holding a NUL byte or
another control character are problems named with the character's code point: such a key looks like a valid one in an
editor, and dropping its utterance (what utils/fix_data_dir.sh would do) would lose data a one-character edit keeps.

``read_kv``/``write_kv`` are the strict reader and the atomic sorted writer everyone uses. ``validate_data_dir``
checks the Kaldi rules and returns every problem (capped) as ``file:line: what. Fix: how``.
"""
from __future__ import annotations

import os
import re
import tempfile
import unicodedata
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

# Which files are keyed by what. Everything the toolkit writes into a data dir must be listed here so that fix/subset/
# combine/split carry it along.
UTT_FILES = (
    "text", "utt2spk", "segments", "feats.scp", "utt2num_frames", "utt2dur", "utt2lang", "utt2num_tokens",
    "instruction", "response", "continuation", "translation", "utt2num_samples",
)
RECO_FILES = ("wav.scp", "reco2dur", "reco2file_and_channel")
SPK_FILES = ("spk2utt", "spk2gender")
# Stage-3 task files that may cover a subset of the utterances: refusals are dropped from the LLM's answers, and a
# training set gives instructions (and so answers) to some of its utterances (blspkd/instruction_eval.py).
SUBSET_FILES = ("instruction", "response", "continuation", "translation")
# Files whose value must be a single positive integer / a non-negative number.
INT_FILES = ("utt2num_frames", "utt2num_tokens", "utt2num_samples")
FLOAT_FILES = ("utt2dur", "reco2dur")
MAX_ERRORS = 50
_UMASK = os.umask(0)
os.umask(_UMASK)  # read once: mkstemp creates 0600 files, written files should get the usual 0644-style mode


# parse_kv problems whose fix needs a human (a re-encoding, a one-character edit): fix_data_dir refuses them instead of
# dropping the line with its utterance.
NEEDS_A_HUMAN = ("not valid UTF-8", "invisible character", "control character")
_BLANKS = re.compile(r"[ \t]+")


class DataDirError(ValueError):
    """A problem in a data dir that the user can fix; the message names the file, the line and the fix."""


def fix_hint(data_dir: str | Path) -> str:
    return f"run utils/fix_data_dir.sh {data_dir}"


@dataclass
class KvFile:
    """One ``<key> <value>`` file parsed leniently: its entries plus the line-level problems found on the way."""

    path: Path
    entries: list[tuple[int, str, str]] = field(default_factory=list)  # (line number, key, value)
    problems: list[tuple[int, str]] = field(default_factory=list)  # (line number or 0 for the whole file, message)
    missing_final_newline: bool = False
    num_lines: int = 0

    def keys(self) -> list[str]:
        return [k for _, k, _ in self.entries]


def describe_char(c: str) -> str:
    """``U+FEFF ZERO WIDTH NO-BREAK SPACE (a UTF-8 byte order mark)``: a character named so that it can be found."""
    name = unicodedata.name(c, "NUL" if c == "\0" else "a control character" if unicodedata.category(c) == "Cc"
                            else "unnamed")
    return f"U+{ord(c):04X} {name}" + (" (a UTF-8 byte order mark)" if c == "\ufeff" else "")


def _invisible(key: str) -> str | None:
    """What is wrong with a key that holds a character an editor does not show, or None."""
    for i, c in enumerate(key):
        if not c.isprintable():
            return f"invisible character in key {key!r}: {describe_char(c)} at character {i + 1}"
    return None


def _control(value: str) -> str | None:
    for i, c in enumerate(value):
        if unicodedata.category(c) == "Cc" and c != "\t":
            return f"control character in the value: {describe_char(c)} at character {i + 1} ({value[:40]!r})"
    return None


def parse_kv(path: str | Path) -> KvFile:
    """Parse a ``<key> <value>`` file without raising: bad lines are reported in ``problems`` and left out of
    ``entries``."""
    path = Path(path)
    out = KvFile(path)
    raw = path.read_bytes()
    if raw and not raw.endswith(b"\n"):
        out.missing_final_newline = True
    blines = raw.split(b"\n")[: -1 if raw.endswith(b"\n") else None] if raw else []
    out.num_lines = len(blines)
    for lineno, bline in enumerate(blines, start=1):
        try:
            line = bline.decode("utf-8")
        except UnicodeDecodeError as e:
            out.problems.append((lineno, f"not valid UTF-8 (byte {e.start}: {bline[e.start:e.start + 1]!r})"))
            continue
        if line.endswith("\r"):
            out.problems.append((lineno, "Windows line ending (\\r\\n)"))
            line = line[:-1]
        if not line.strip():
            out.problems.append((lineno, "blank line"))
            continue
        if line[0] in " \t":
            out.problems.append((lineno, "line starts with whitespace (the key must come first)"))
            continue
        parts = _BLANKS.split(line.rstrip(" \t"), maxsplit=1)
        key, value = parts[0], parts[1] if len(parts) > 1 else ""
        problem = _invisible(key) or _control(value)
        if problem:
            out.problems.append((lineno, problem))
            continue
        out.entries.append((lineno, key, value))
    if not raw:
        out.problems.append((0, "file is empty"))
    return out


def read_utf8(path: str | Path) -> str:
    """A text file's content; a DataDirError naming the line and byte when it is not UTF-8."""
    raw = Path(path).read_bytes()
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise DataDirError(f"{path}:{line}: not valid UTF-8 (byte {e.start}: {raw[e.start:e.start + 1]!r}). Fix: "
                           f"re-encode the file as UTF-8 (e.g. iconv -f latin1 -t utf-8 {path})") from None


def read_kv(path: str | Path) -> dict[str, str]:
    """Read a ``<key> <value>`` file into a dict in file order; any malformed line or duplicate key raises
    DataDirError."""
    path = Path(path)
    if not path.is_file():
        raise DataDirError(f"{path}: {'a directory, not a file' if path.is_dir() else 'file not found'}")
    kv = parse_kv(path)
    errors = [f"{path}:{n}: {msg}" if n else f"{path}: {msg}" for n, msg in kv.problems if msg != "file is empty"]
    out: dict[str, str] = {}
    first: dict[str, int] = {}
    for lineno, key, value in kv.entries:
        if key in out:
            errors.append(f"{path}:{lineno}: duplicate key {key!r} (first at line {first[key]})")
            continue
        out[key] = value
        first[key] = lineno
    if errors:
        more = f"\n... and {len(errors) - MAX_ERRORS} more" if len(errors) > MAX_ERRORS else ""
        raise DataDirError(
            "\n".join(errors[:MAX_ERRORS]) + more + f"\nFix: correct the file, or {fix_hint(path.parent)}"
        )
    return out


def read_counts(path: str | Path) -> dict[str, int]:
    """Read a file of positive integer values (``utt2num_frames``, ``utt2num_tokens``) strictly, naming file:line."""
    path = Path(path)
    table = read_kv(path)
    for lineno, key, value in parse_kv(path).entries:
        if not (value.isascii() and value.isdigit() and int(value) > 0):
            raise DataDirError(f"{path}:{lineno}: value {value!r} of {key!r} is not a positive integer. Fix: correct "
                               f"the line or {fix_hint(path.parent)}")
    return {key: int(value) for key, value in table.items()}


def sort_keys(keys: Iterable[str]) -> list[str]:
    """Keys in LC_ALL=C order (UTF-8 byte order equals code-point order, so plain ``sorted`` is right)."""
    return sorted(keys)


def write_kv(path: str | Path, data: Mapping[str, str] | Iterable[tuple[str, str]]) -> None:
    """Write ``<key> <value>`` lines sorted by key, atomically (temporary file + rename), UTF-8, newline-terminated."""
    path = Path(path)
    items = dict(data.items() if isinstance(data, Mapping) else data)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.chmod(tmp, 0o666 & ~_UMASK)
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as f:
            for key in sort_keys(items):
                value = items[key]
                f.write(f"{key} {value}\n" if value != "" else f"{key}\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def utt2spk_to_spk2utt(utt2spk: Mapping[str, str]) -> dict[str, str]:
    """``spk2utt`` (speaker -> space-separated utterances, in utt2spk's sorted order) from ``utt2spk``."""
    spk2utts: dict[str, list[str]] = {}
    for utt in sort_keys(utt2spk):
        spk2utts.setdefault(utt2spk[utt], []).append(utt)
    return {spk: " ".join(utts) for spk, utts in spk2utts.items()}


def write_data_dir(data_dir: str | Path, utt2spk: Mapping[str, str], **tables: Mapping[str, str]) -> Path:
    """A Kaldi data dir: ``utt2spk``, each of ``tables`` (file name -> key/value table, e.g. ``text=...``;
    ``wav.scp`` is passed as ``**{"wav.scp": ...}``) and ``spk2utt`` derived from ``utt2spk``; returns the dir."""
    d = Path(data_dir)
    d.mkdir(parents=True, exist_ok=True)
    for name, table in tables.items():
        write_kv(d / name, table)
    write_kv(d / "utt2spk", utt2spk)
    write_kv(d / "spk2utt", utt2spk_to_spk2utt(utt2spk))
    return d


def spk2utt_to_utt2spk(spk2utt: Mapping[str, str]) -> dict[str, str]:
    return {utt: spk for spk, utts in spk2utt.items() for utt in utts.split()}


def present_files(data_dir: str | Path, names: Iterable[str]) -> list[str]:
    return [n for n in names if (Path(data_dir) / n).is_file()]


def utterance_files(data_dir: str | Path) -> list[str]:
    """The per-utterance files present; ``wav.scp`` is one too when there is no ``segments`` file."""
    d = Path(data_dir)
    names = present_files(d, UTT_FILES)
    if "segments" not in names and (d / "wav.scp").is_file():
        names.insert(0, "wav.scp")
    return names


def _parse_segment(value: str) -> tuple[str, float, float] | str:
    """``<reco> <start> <end>`` -> (reco, start, end), or a description of what is wrong."""
    parts = value.split()
    if len(parts) != 3:
        return f"expected '<utt> <recording> <start> <end>', got {len(parts) + 1} fields"
    try:
        start, end = float(parts[1]), float(parts[2])
    except ValueError:
        return f"start/end times {parts[1]!r} {parts[2]!r} are not numbers"
    if start < 0:
        return f"start time {start} is negative"
    if not start < end:
        return f"start time {start} is not before end time {end}"
    return parts[0], start, end


def read_segments(path: str | Path) -> dict[str, tuple[str, float, float]]:
    """``segments`` as utt -> (recording, start s, end s); malformed lines raise DataDirError naming file:line."""
    path = Path(path)
    kv = parse_kv(path)
    out = {}
    for lineno, key, value in kv.entries:
        seg = _parse_segment(value)
        if isinstance(seg, str):
            raise DataDirError(f"{path}:{lineno}: {seg}. Fix: correct the line or {fix_hint(path.parent)}")
        out[key] = seg
    read_kv(path)  # duplicates and line-level problems
    return out


def _short(text: str, limit: int = 60) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


class _Errors:
    """Collects validation messages; keeps the first MAX_ERRORS and counts the rest."""

    def __init__(self, limit: int):
        self.limit = limit
        self.items: list[str] = []
        self.total = 0

    def add(self, path: Path, lineno: int, what: str, fix: str) -> None:
        self.total += 1
        if len(self.items) < self.limit:
            where = f"{path}:{lineno}" if lineno else f"{path}"
            self.items.append(f"{where}: {what}. Fix: {fix}")

    def result(self) -> list[str]:
        if self.total > len(self.items):
            return self.items + [f"... and {self.total - len(self.items)} more errors"]
        return self.items


def _check_file(kv: KvFile, fix: str, errors: _Errors) -> dict[str, int]:
    """Line-level checks, sort order and unique keys of one file. Returns key -> first line number."""
    path = kv.path
    crlf = [n for n, msg in kv.problems if msg.startswith("Windows line ending")]
    if crlf:  # one message per file: a converted file fixes them all
        errors.add(path, crlf[0], f"Windows line ending (\\r\\n) on {len(crlf)} line(s)",
                   f"convert line endings (sed -i 's/\\r$//' {path}) or {fix}")
    for lineno, msg in kv.problems:
        if msg.startswith("Windows line ending"):
            continue
        if msg.startswith("not valid UTF-8"):
            how = f"re-encode the file as UTF-8 (e.g. iconv -f latin1 -t utf-8 {path})"
        elif "U+FEFF" in msg:
            how = f"remove the byte order mark (sed -i 's/\\xEF\\xBB\\xBF//g' {path}); fix_data_dir would drop the line"
        elif msg.startswith(NEEDS_A_HUMAN):
            how = "remove the character (or correct the script that wrote the file); fix_data_dir would drop the line"
        elif msg == "file is empty":
            how = f"remove the empty file or fill it; {fix}"
        else:
            how = fix
        errors.add(path, lineno, msg, how)
    if kv.missing_final_newline:
        errors.add(path, kv.num_lines, "last line is not newline-terminated",
                   f"append a newline (echo >> {path}) or {fix}")
    first: dict[str, int] = {}
    prev_key = None
    unsorted_reported = False
    for lineno, key, _ in kv.entries:
        if key in first:
            errors.add(path, lineno, f"duplicate key {key!r} (first at line {first[key]})",
                       f"remove one of the two lines (utils/fix_data_dir.sh {path.parent} keeps identical "
                       "duplicate lines once and drops keys whose lines disagree)")
            continue
        first[key] = lineno
        if prev_key is not None and key < prev_key and not unsorted_reported:
            errors.add(path, lineno, f"not sorted: key {key!r} comes after {prev_key!r} (LC_ALL=C order)", fix)
            unsorted_reported = True  # one message per file is enough: sorting fixes them all
        prev_key = key
    return first


SPEAKER_PREFIX_FIX = (
    "make every utterance id start with its speaker id, e.g. <speaker>-<rest> (in local/data.sh), which Kaldi's sort "
    "orders need; without speaker information, use each utterance id as its own speaker id"
)


def _check_speaker_order(entries: list[tuple[int, str, str]], path: Path, errors: _Errors) -> None:
    """Kaldi's rule (validate_data_dir.sh: ``sort -k2 -C utt2spk``): in utterance order, speaker ids never decrease."""
    prev = None
    for lineno, _, spk in sorted(entries, key=lambda e: e[1]):
        if prev is not None and spk < prev:
            errors.add(path, lineno, f"speaker ids are not sorted along the sorted utterances: {spk!r} comes after "
                       f"{prev!r} (Kaldi needs utt2spk sorted by utterance and by speaker at once)",
                       "end every speaker id with a separator that sorts before the characters ids use, e.g. '-' "
                       "(spk1-a, spk10-b): '_' sorts after digits and capitals")
            return
        prev = spk


def validate_data_dir(
    data_dir: str | Path, require_text: bool = True, max_errors: int = MAX_ERRORS
) -> list[str]:
    """Check a data dir with Kaldi semantics; return every problem found (empty list = valid), capped at ``max_errors``.

    Checks: required files present; every file UTF-8, newline-terminated, without blank lines, sorted with LC_ALL=C,
    with unique keys; the per-utterance files share one key set; ``spk2utt`` equals what ``utt2spk`` implies;
    ``segments`` lines have start < end and name recordings of ``wav.scp``; transcripts are not empty; numeric files
    hold numbers.
    """
    d = Path(data_dir)
    errors = _Errors(max_errors)
    fix = fix_hint(data_dir)
    if not d.is_dir():
        return [f"{d}: not a directory. Fix: create the data dir (local/data.sh) or pass the right path"]
    required = ["utt2spk", "spk2utt"] + (["text"] if require_text else [])
    required.append("wav.scp" if not (d / "feats.scp").is_file() else "feats.scp")
    for name in required:
        if not (d / name).is_file():
            how = {"spk2utt": f"utils/utt2spk_to_spk2utt.sh {d}/utt2spk > {d}/spk2utt"}.get(
                name, "write it in local/data.sh")
            errors.add(d / name, 0, "required file is missing", how)
    files = {
        name: parse_kv(d / name)
        for name in (*UTT_FILES, *RECO_FILES, *SPK_FILES)
        if (d / name).is_file()
    }
    if any(msg.startswith(NEEDS_A_HUMAN) for kv in files.values() for _, msg in kv.problems):
        # Key sets compared now differ because of those lines; fix_data_dir would drop their utterances.
        fix = "first correct the lines with invisible or control characters or bad encoding, then validate again"
    first_line = {name: _check_file(kv, fix, errors) for name, kv in files.items()}
    values = {name: {k: v for _, k, v in reversed(kv.entries)} for name, kv in files.items()}  # first value wins

    # The utterance set is defined by utt2spk (falling back to text); every per-utterance file must have the same keys.
    ref = "utt2spk" if "utt2spk" in files else ("text" if "text" in files else None)
    if ref is not None:
        utts = set(first_line[ref])
        for name in utterance_files(d):
            if name == ref:
                continue
            keys = first_line[name]
            for key in [k for k in keys if k not in utts]:
                errors.add(d / name, keys[key], f"utterance {key!r} is not in {ref}", fix)
            missing = sorted(utts - set(keys))
            if missing and name not in SUBSET_FILES:
                shown = ", ".join(f"{k!r}" for k in missing[:5]) + (" ..." if len(missing) > 5 else "")
                errors.add(d / name, 0, f"{len(missing)} utterance(s) of {ref} missing: {shown}", fix)

    if "text" in files:
        for key, lineno in first_line["text"].items():
            if not values["text"][key].strip():
                errors.add(d / "text", lineno, f"empty transcript for utterance {key!r}",
                           f"give it a transcript, or drop it with utils/fix_data_dir.sh {d}")
    for name in ("instruction", "response", "continuation", "translation", "utt2lang"):
        for key, lineno in first_line.get(name, {}).items():
            if not values[name][key].strip():
                errors.add(d / name, lineno, f"empty value for utterance {key!r}", f"fill it or {fix}")
    if "utt2spk" in files:
        prefix_ok = True
        for key, lineno in first_line["utt2spk"].items():
            spk = values["utt2spk"][key]
            if len(spk.split()) != 1:
                errors.add(d / "utt2spk", lineno, f"utterance {key!r} must have exactly one speaker id, "
                           f"got {spk!r}", f"correct the line or {fix}")
            elif not key.startswith(spk):
                prefix_ok = False
                errors.add(d / "utt2spk", lineno, f"speaker id {spk!r} is not a prefix of utterance id {key!r}",
                           SPEAKER_PREFIX_FIX)
        if prefix_ok:
            _check_speaker_order(files["utt2spk"].entries, d / "utt2spk", errors)
    if "utt2spk" in files and "spk2utt" in files:
        expected = utt2spk_to_spk2utt({k: v for k, v in values["utt2spk"].items() if len(v.split()) == 1})
        got = values["spk2utt"]
        for spk, lineno in first_line["spk2utt"].items():
            if spk not in expected:
                errors.add(d / "spk2utt", lineno, f"speaker {spk!r} has no utterance in utt2spk",
                           f"utils/utt2spk_to_spk2utt.sh {d}/utt2spk > {d}/spk2utt")
            elif got[spk].split() != expected[spk].split():
                errors.add(d / "spk2utt", lineno, f"speaker {spk!r} lists {_short(got[spk])!r} but utt2spk gives "
                           f"{_short(expected[spk])!r}",
                           f"utils/utt2spk_to_spk2utt.sh {d}/utt2spk > {d}/spk2utt")
        for spk in sort_keys(set(expected) - set(got)):
            errors.add(d / "spk2utt", 0, f"speaker {spk!r} of utt2spk is missing",
                       f"utils/utt2spk_to_spk2utt.sh {d}/utt2spk > {d}/spk2utt")
    if "segments" in files:
        recos = set(first_line.get("wav.scp", {}))
        for key, lineno in first_line["segments"].items():
            seg = _parse_segment(values["segments"][key])
            if isinstance(seg, str):
                errors.add(d / "segments", lineno, f"utterance {key!r}: {seg}", f"correct the line or {fix}")
            elif "wav.scp" in files and seg[0] not in recos:
                errors.add(d / "segments", lineno, f"utterance {key!r}: recording {seg[0]!r} is not in wav.scp",
                           f"add the recording to wav.scp or {fix}")
    for name in ("wav.scp", "feats.scp"):
        for key, lineno in first_line.get(name, {}).items():
            if not values[name][key].strip():
                errors.add(d / name, lineno, f"no path or command for {key!r}", f"correct the line or {fix}")
    for name in (*INT_FILES, *FLOAT_FILES):
        for key, lineno in first_line.get(name, {}).items():
            value = values[name][key]
            try:
                ok = int(value) > 0 if name in INT_FILES else float(value) >= 0
            except ValueError:
                ok = False
            if not ok:
                kind = "a positive integer" if name in INT_FILES else "a non-negative number"
                errors.add(d / name, lineno, f"value {value!r} for {key!r} is not {kind}", f"correct the line or {fix}")
    return errors.result()


def check_data_dir(data_dir: str | Path, **kwargs) -> None:
    """Raise DataDirError listing every problem if the data dir is not valid."""
    problems = validate_data_dir(data_dir, **kwargs)
    if problems:
        raise DataDirError(f"{data_dir} is not a valid data dir ({len(problems)} problem(s)):\n" + "\n".join(problems))
