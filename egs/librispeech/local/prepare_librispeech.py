#!/usr/bin/env python3
"""Kaldi data dirs from an unpacked LibriSpeech tree (openslr.org/12).

Usage:
    python local/prepare_librispeech.py --librispeech_dir /data/LibriSpeech --out_dir data \
        --subsets train-clean-100 dev-clean dev-other test-clean test-other [--combine train=train-clean-100,...]

Layout read (the real one): ``DIR/<subset>/<spk>/<chapter>/<spk>-<chapter>-<utt>.flac`` with one
``<spk>-<chapter>.trans.txt`` per chapter holding ``<spk>-<chapter>-<utt> UPPER CASE TEXT`` lines.
Each subset becomes ``OUT/<subset with _ for ->`` holding wav.scp (absolute flac paths, read by soundfile),
text, utt2spk and spk2utt. LibriSpeech ids already start with the speaker, so they are used unchanged.

Transcript normalisation for an LLM (see README): LibriSpeech is upper case without punctuation; we write sentence case
(first letter and the pronoun "I" and its contractions upper case, everything else lower case) and add no punctuation,
because none can be recovered reliably. Scoring normalises case anyway, so WER does not depend on this choice.
"""
from __future__ import annotations

import argparse
import logging
import re
import sys
from pathlib import Path

from blspkd.data.kaldi_dir import write_data_dir
from blspkd.utils.logging import setup_logging

log = logging.getLogger("blspkd")

SUBSETS = (
    "train-clean-100", "train-clean-360", "train-other-500", "dev-clean", "dev-other", "test-clean", "test-other",
)
_UTT_RE = re.compile(r"^(\d+)-(\d+)-(\d+)$")
_PRONOUN_I = re.compile(r"\bi\b")  # also catches i'm, i'll, i've, i'd: the apostrophe is a word boundary


class CorpusError(RuntimeError):
    """A problem with the corpus on disk; the message names the path and the fix."""


def normalise_transcript(text: str) -> str:
    """LibriSpeech upper case -> sentence case, whitespace collapsed, apostrophes kept, no punctuation added."""
    words = text.lower().split()
    if not words:
        return ""
    sentence = _PRONOUN_I.sub("I", " ".join(words))
    return sentence[0].upper() + sentence[1:]


def set_name(subset: str) -> str:
    return subset.replace("-", "_")


def find_subset_dir(root: Path, subset: str) -> Path:
    """``root/<subset>``; also accepts the parent of the ``LibriSpeech/`` folder the tarballs unpack into."""
    for cand in (root / subset, root / "LibriSpeech" / subset):
        if cand.is_dir():
            return cand
    raise CorpusError(
        f"LibriSpeech subset '{subset}' not found: neither {root / subset} nor {root / 'LibriSpeech' / subset} is a "
        f"directory. Download {subset}.tar.gz from https://www.openslr.org/12 and unpack it with "
        f"'tar -xzf {subset}.tar.gz -C <dir>', then pass --librispeech_dir <dir>/LibriSpeech."
    )


def read_subset(subset_dir: Path) -> list[tuple[str, str, str, str]]:
    """(utt_id, speaker, flac path, normalised text) for every transcript line of a subset, in sorted order."""
    trans_files = sorted(subset_dir.glob("*/*/*.trans.txt"))
    if not trans_files:
        raise CorpusError(
            f"{subset_dir}: no <spk>/<chapter>/<spk>-<chapter>.trans.txt files found. The directory is not an unpacked "
            "LibriSpeech subset (or extraction is incomplete); re-extract the tarball."
        )
    records: list[tuple[str, str, str, str]] = []
    seen: dict[str, str] = {}
    unlisted_flacs = 0
    for trans in trans_files:
        spk, chapter = trans.parent.parent.name, trans.parent.name
        if trans.name != f"{spk}-{chapter}.trans.txt":
            raise CorpusError(f"{trans}: expected the name {spk}-{chapter}.trans.txt for a file in {spk}/{chapter}/; "
                              "the tree does not have the LibriSpeech layout (do not rename files).")
        listed = set()
        for lineno, line in enumerate(trans.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            utt, _, raw = line.strip().partition(" ")
            where = f"{trans}:{lineno}"
            m = _UTT_RE.match(utt)
            if not m or m.group(1) != spk or m.group(2) != chapter:
                raise CorpusError(f"{where}: utterance id '{utt}' should look like {spk}-{chapter}-NNNN "
                                  "(speaker and chapter of its folder); the transcript file is corrupt, re-extract it.")
            text = normalise_transcript(raw)
            if not text:
                raise CorpusError(f"{where}: empty transcript for {utt}; the transcript file is corrupt, "
                                  "re-extract it.")
            flac = trans.parent / f"{utt}.flac"
            if not flac.is_file():
                raise CorpusError(f"{where}: audio {flac} is missing; the subset is incompletely extracted, "
                                  "re-extract the tarball.")
            if utt in seen:
                raise CorpusError(f"{where}: duplicate utterance id {utt} (first seen at {seen[utt]}); remove the "
                                  "duplicate line.")
            seen[utt] = where
            listed.add(utt)
            records.append((utt, spk, str(flac.resolve()), text))
        unlisted_flacs += sum(1 for f in trans.parent.glob("*.flac") if f.stem not in listed)
    if unlisted_flacs:
        log.warning("%s: skipped %d flac files that have no transcript line", subset_dir, unlisted_flacs)
    records.sort()
    return records


def write_set(out: Path, records: list[tuple[str, str, str, str]]) -> None:
    write_data_dir(out, {u: s for u, s, _, _ in records}, **{"wav.scp": {u: p for u, _, p, _ in records}},
                   text={u: t for u, _, _, t in records})


def parse_combine(spec: str) -> tuple[str, list[str]]:
    name, _, parts = spec.partition("=")
    subsets = [p for p in parts.split(",") if p]
    if not name or not subsets:
        raise CorpusError(f"--combine '{spec}': expected NAME=subset1,subset2 "
                          "(e.g. train=train-clean-100,train-clean-360)")
    return name, subsets


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--librispeech_dir", required=True, type=Path, help="folder holding train-clean-100/ etc.")
    parser.add_argument("--out_dir", required=True, type=Path, help="where data/<set>/ dirs are written")
    parser.add_argument("--subsets", nargs="+", default=list(SUBSETS), help="LibriSpeech subsets to prepare")
    parser.add_argument("--combine", action="append", default=[],
                        help="NAME=subset1,subset2: also write the union of those subsets as OUT/NAME (repeatable)")
    args = parser.parse_args(argv)
    setup_logging()
    try:
        unknown = [s for s in args.subsets if s not in SUBSETS]
        if unknown:
            raise CorpusError(f"unknown LibriSpeech subset(s) {unknown}; choose among {list(SUBSETS)}")
        combines = [parse_combine(c) for c in args.combine]
        for _, parts in combines:
            missing = [p for p in parts if p not in args.subsets]
            if missing:
                raise CorpusError(f"--combine uses {missing}, which are not in --subsets {args.subsets}")
        if not args.librispeech_dir.is_dir():
            raise CorpusError(f"--librispeech_dir {args.librispeech_dir} is not a directory; pass the folder "
                              "that holds the unpacked subsets (e.g. /data/LibriSpeech).")
        prepared = {}
        for subset in args.subsets:
            records = read_subset(find_subset_dir(args.librispeech_dir, subset))
            write_set(args.out_dir / set_name(subset), records)
            prepared[subset] = records
            log.info("%s: %d utterances, %d speakers -> %s", subset, len(records), len({r[1] for r in records}),
                     args.out_dir / set_name(subset))
        for name, parts in combines:
            records = sorted(r for p in parts for r in prepared[p])
            write_set(args.out_dir / name, records)
            log.info("%s = %s: %d utterances -> %s", name, "+".join(parts), len(records), args.out_dir / name)
    except CorpusError as e:
        log.error("%s", e)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
