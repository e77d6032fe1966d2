"""The ``test_real`` set: real read speech (LibriVox, Sense and Sensibility) from Debian's pocketsphinx-testdata.

Usage:
    python local/prepare_librivox.py --src /usr/share/pocketsphinx/test/data/librivox --data_dir data/test_real

The source holds 16 kHz mono wavs ``<id>.wav``, a ``fileids`` list and a ``transcription`` file with lines
``<s> lower-case words </s> (<id>)``. The transcripts are brought to the synthetic sets' style (natural casing and
punctuation, as an LLM reads text) as far as that can be done without guessing: the first letter is capitalised, a
standalone "i" becomes "I", and a final period is added; proper names stay lower-case (scoring normalises case and
punctuation). All clips are one reader: speaker ``librivox``, utterance id ``librivox-<id>``.
"""
from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import soundfile

from blspkd.data.kaldi_dir import write_data_dir

DEFAULT_SRC = "/usr/share/pocketsphinx/test/data/librivox"
SPEAKER = "librivox"
_LINE = re.compile(r"^<s>\s+(?P<text>.*?)\s+</s>\s+\((?P<id>[^()\s]+)\)$")


def sentence_style(words: str) -> str:
    """``he was not an ill disposed young man`` -> ``He was not an ill disposed young man.``"""
    text = re.sub(r"\bi\b", "I", " ".join(words.split()))
    return text[:1].upper() + text[1:] + "."


def read_transcription(path: Path) -> dict[str, str]:
    out: dict[str, str] = {}
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        m = _LINE.match(line.strip())
        if m is None:
            raise ValueError(f"{path}:{lineno}: expected '<s> words </s> (id)', got {line!r}")
        if m["id"] in out:
            raise ValueError(f"{path}:{lineno}: duplicate utterance id {m['id']}")
        if not m["text"].strip():
            raise ValueError(f"{path}:{lineno}: empty transcript for {m['id']}")
        out[m["id"]] = sentence_style(m["text"])
    return out


def prepare(src: Path, data_dir: Path) -> int:
    transcripts = read_transcription(src / "transcription")
    fileids = (src / "fileids").read_text(encoding="utf-8").split()
    if sorted(fileids) != sorted(transcripts):
        raise ValueError(f"{src}/fileids and {src}/transcription list different ids: "
                         f"{sorted(set(fileids) ^ set(transcripts))}")
    wav_scp, text, utt2spk = {}, {}, {}
    for fid in fileids:
        wav = (src / f"{fid}.wav").resolve()
        info = soundfile.info(str(wav))  # raises naming the file when it is missing or unreadable
        if info.samplerate != 16000 or info.channels != 1:
            raise ValueError(f"{wav}: expected 16 kHz mono, found {info.samplerate} Hz x {info.channels} channels")
        utt = f"{SPEAKER}-{fid}"
        wav_scp[utt], text[utt], utt2spk[utt] = str(wav), transcripts[fid], SPEAKER
    write_data_dir(data_dir, utt2spk, **{"wav.scp": wav_scp}, text=text)
    return len(wav_scp)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--src", default=DEFAULT_SRC, help="default: %(default)s")
    parser.add_argument("--data_dir", default="data/test_real", help="default: %(default)s")
    args = parser.parse_args(argv)
    src = Path(args.src)
    if not (src / "transcription").is_file():
        sys.exit(f"{src}/transcription not found: install Debian's pocketsphinx-testdata (tools/install.sh does, as "
                 "root) or pass --src")
    n = prepare(src, Path(args.data_dir))
    print(f"prepared {args.data_dir}: {n} utterances from {src}", file=sys.stderr)


if __name__ == "__main__":
    main()
