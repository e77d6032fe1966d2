#!/usr/bin/env python3
"""Kaldi data dirs for CoVoST 2 En->X speech translation from Common Voice English clips and the CoVoST 2 tsv.

Usage:
    python local/prepare_covost2.py --cv_dir /data/cv-corpus-4-2019-12-10/en --covost_dir /data/covost \
        --tgt_lang de --out_dir data [--audio_reader ffmpeg|soundfile]

Inputs (the real layouts):
* ``--cv_dir``: a Common Voice English release folder holding ``clips/*.mp3`` and ``validated.tsv`` (columns
  client_id, path, sentence, ...). CoVoST 2 was built on Common Voice 4; later releases contain almost all of its clips.
* ``--covost_dir``: the folder holding ``covost_v2.en_<lang>.tsv`` (unpacked from ``covost_v2.en_<lang>.tsv.tar.gz``)
  with columns path, translation, split (and usually sentence, client_id); split is train/train_covost, dev or test.
  Rows are joined to validated.tsv on ``path`` for any of sentence/client_id the CoVoST tsv lacks (as
  get_covost_splits.py does). Both tsv files are read like CoVoST's own code reads them: tab-separated, no quoting,
  backslash escapes.

Outputs ``OUT/{train,dev,test}_en_<lang>/`` with wav.scp, text (English transcript, case and punctuation kept),
translation (target text), utt2lang (the target language code, i.e. the language of ``translation``), utt2spk and
spk2utt. The training task ``translation`` (conf/finetune.yaml) builds the instruction ("Translate the following speech
into German.") and takes the response from ``translation``. Speakers are the first 12 hex digits of sha256(client_id)
(client ids are 128-char hashes); utterance ids are ``<spk>-<clip name without .mp3>`` so that they sort by speaker.

Audio: ``--audio_reader ffmpeg`` (default) writes ``ffmpeg ... -ac 1 -ar 16000 -f wav - |`` pipes, so features see
16 kHz mono whatever the clip's rate (Common Voice mp3 is 48 kHz). ``soundfile`` writes the mp3 paths themselves
(libsndfile >= 1.1 decodes mp3); the feature extractor then has to resample 48 kHz to 16 kHz.

Rows whose clip is missing, whose path is not in validated.tsv (when needed), or with an empty transcript or translation
are skipped with a logged count per reason (Common Voice deletes clips on request, so a few are expected to be gone).
"""
from __future__ import annotations

import argparse
import csv
import hashlib
import logging
import shlex
import sys
from collections import Counter
from pathlib import Path

from covost_languages import EN_XX

from blspkd.data.kaldi_dir import write_data_dir
from blspkd.utils.logging import setup_logging

log = logging.getLogger("blspkd")

SPLIT_OF = {"train": "train", "train_covost": "train", "dev": "dev", "test": "test"}


class CorpusError(RuntimeError):
    """A problem with the corpus on disk; the message names the path and the fix."""


def read_tsv(path: Path, required: tuple[str, ...]) -> tuple[list[str], list[tuple[int, dict[str, str]]]]:
    """Header and (line number, row) pairs of a Common Voice style tsv; every row must have the header's width."""
    if not path.is_file():
        raise CorpusError(f"{path} not found")
    rows = []
    with path.open(encoding="utf-8", newline="") as f:
        reader = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE, escapechar="\\")
        header = next(reader, None)
        if header is None:
            raise CorpusError(f"{path}: empty file; re-extract it from its archive.")
        missing = [c for c in required if c not in header]
        if missing:
            raise CorpusError(f"{path}:1: header {header} lacks column(s) {missing}; is this the right file?")
        for fields in reader:
            lineno = reader.line_num
            if len(fields) != len(header):
                raise CorpusError(f"{path}:{lineno}: {len(fields)} tab-separated fields, the header has {len(header)}; "
                                  "the file is truncated or corrupt, re-extract it.")
            rows.append((lineno, dict(zip(header, fields))))
    return header, rows


def clean(text: str) -> str:
    return " ".join(text.split())


def speaker_id(client_id: str) -> str:
    return hashlib.sha256(client_id.encode("utf-8")).hexdigest()[:12]


def wav_entry(clip: Path, reader: str) -> str:
    if reader == "ffmpeg":
        return f"ffmpeg -nostdin -loglevel error -i {shlex.quote(str(clip))} -ac 1 -ar 16000 -f wav - |"
    return str(clip)


def prepare(cv_dir: Path, covost_dir: Path, tgt_lang: str, reader: str) -> dict[str, list[dict[str, str]]]:
    """Utterance records per split (train/dev/test), sorted by utterance id."""
    covost_tsv = covost_dir / f"covost_v2.en_{tgt_lang}.tsv"
    if not covost_tsv.is_file():
        packed = covost_tsv.with_name(covost_tsv.name + ".tar.gz")
        fix = (f"unpack it with 'tar -xzf {packed} -C {covost_dir}'" if packed.is_file() else
               f"download https://dl.fbaipublicfiles.com/covost/{packed.name} and unpack it into {covost_dir}")
        raise CorpusError(f"{covost_tsv} not found; {fix}.")
    clips_dir = cv_dir / "clips"
    if not clips_dir.is_dir():
        raise CorpusError(f"{clips_dir} is not a directory; --cv_dir must be the English folder of a Common Voice "
                          "release (the one holding clips/ and validated.tsv), e.g. cv-corpus-4-2019-12-10/en.")
    header, rows = read_tsv(covost_tsv, ("path", "translation", "split"))
    cv_info: dict[str, dict[str, str]] = {}
    if not {"sentence", "client_id"} <= set(header):
        _, cv_rows = read_tsv(cv_dir / "validated.tsv", ("client_id", "path", "sentence"))
        cv_info = {row["path"]: row for _, row in cv_rows}

    records: dict[str, list[dict[str, str]]] = {"train": [], "dev": [], "test": []}
    seen: dict[str, int] = {}
    skipped: Counter[str] = Counter()
    for lineno, row in rows:
        where = f"{covost_tsv}:{lineno}"
        split = SPLIT_OF.get(row["split"])
        if split is None:
            raise CorpusError(f"{where}: unknown split '{row['split']}' (expected one of {sorted(SPLIT_OF)})")
        path = row["path"]
        if path in seen:
            raise CorpusError(f"{where}: clip {path} is listed twice (first at line {seen[path]}); remove one line.")
        seen[path] = lineno
        extra = row if not cv_info else cv_info.get(path)
        if extra is None:
            skipped["clip not in validated.tsv"] += 1
            continue
        text, translation = clean(row.get("sentence") or extra["sentence"]), clean(row["translation"])
        if not text:
            skipped["empty transcript"] += 1
            continue
        if not translation:
            skipped["empty translation"] += 1
            continue
        clip = clips_dir / path
        if not clip.is_file():
            skipped["clip missing from clips/"] += 1
            continue
        spk = speaker_id(row.get("client_id") or extra["client_id"])
        records[split].append({
            "utt": f"{spk}-{Path(path).stem}", "spk": spk, "wav": wav_entry(clip.resolve(), reader),
            "text": text, "translation": translation,
        })
    total_kept = sum(len(v) for v in records.values())
    for reason, n in sorted(skipped.items()):
        log.warning("skipped %d of %d rows of %s: %s", n, len(rows), covost_tsv, reason)
    if total_kept == 0:
        raise CorpusError(f"no usable utterance in {covost_tsv} with clips from {clips_dir} "
                          f"(skipped: {dict(skipped)}); "
                          "check that --cv_dir is the English Common Voice folder whose clips CoVoST 2 uses.")
    for split, recs in records.items():
        if not recs:
            raise CorpusError(f"{covost_tsv}: the {split} split is empty after skipping {dict(skipped)}")
        recs.sort(key=lambda r: r["utt"])
    return records


def write_set(out: Path, recs: list[dict[str, str]], tgt_lang: str) -> None:
    write_data_dir(out, {r["utt"]: r["spk"] for r in recs},
                   **{"wav.scp": {r["utt"]: r["wav"] for r in recs}}, text={r["utt"]: r["text"] for r in recs},
                   translation={r["utt"]: r["translation"] for r in recs},
                   utt2lang={r["utt"]: tgt_lang for r in recs})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cv_dir", required=True, type=Path,
                        help="Common Voice English folder (clips/, validated.tsv)")
    parser.add_argument("--covost_dir", required=True, type=Path, help="folder holding covost_v2.en_<lang>.tsv")
    parser.add_argument("--tgt_lang", required=True, help=f"target language, one of: {' '.join(EN_XX)}")
    parser.add_argument("--out_dir", required=True, type=Path, help="where data/<set>/ dirs are written")
    parser.add_argument("--audio_reader", choices=("ffmpeg", "soundfile"), default="ffmpeg",
                        help="wav.scp as ffmpeg pipes to 16 kHz wav (default) or plain mp3 paths")
    args = parser.parse_args(argv)
    setup_logging()
    try:
        if args.tgt_lang not in EN_XX:
            raise CorpusError(f"--tgt_lang {args.tgt_lang}: not a CoVoST 2 En->X language; choose one of "
                              f"{' '.join(EN_XX)}")
        records = prepare(args.cv_dir, args.covost_dir, args.tgt_lang, args.audio_reader)
        for split, recs in records.items():
            out = args.out_dir / f"{split}_en_{args.tgt_lang}"
            write_set(out, recs, args.tgt_lang)
            log.info("%s: %d utterances, %d speakers -> %s", split, len(recs), len({r["spk"] for r in recs}), out)
    except CorpusError as e:
        log.error("%s", e)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
