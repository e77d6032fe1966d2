"""Real English sentences from Debian's ``fortunes`` package, filtered for speech synthesis and for an LLM to read.

Usage:
    python local/fortune_sentences.py [--fortunes_dir /usr/share/games/fortunes]   # prints the sentences, one a line

A fortune file holds records separated by ``%`` lines; an attribution starts with ``--``. Records are joined into one
line and split into sentences. A sentence is kept when it is 5-20 words of plain ASCII letters with ordinary punctuation
(``, ; ' -`` inside, ``. ? !`` at the end), starts with a capital letter, has no digits, quotes, acronyms, abbreviation
at its end or capitalised function word inside (a sign of a title or a verse line joined to the text), and was not seen
before (case and punctuation ignored). Files of verse, ASCII art, ethnic jokes and Debian hints are left out.
"""
from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

DEFAULT_FORTUNES_DIR = "/usr/share/games/fortunes"
EXCLUDED_FILES = {"ascii-art", "songs-poems", "ethnic", "translate-me", "debian", "linuxcookie"}
MIN_WORDS, MAX_WORDS = 5, 20
_CLEAN = re.compile(r"^[A-Z][A-Za-z ,;'\-]*[a-z][.?!]$")
_SENTENCE_END = re.compile(r"(?<=[.?!])\s+(?=[A-Z])")
# Capitalised inside a sentence, these words mean two lines were joined (a title and its text, or verse lines).
_JOIN_MARKERS = {"The", "A", "An", "And", "But", "Or", "So", "If", "When", "Then", "We", "You", "He", "She", "It",
                 "They", "This", "That", "What", "Why", "How", "In", "On", "To", "Of", "For", "Is", "My", "Your", "Our"}
_ABBREVIATIONS = {"mr.", "mrs.", "ms.", "dr.", "st.", "jr.", "sr.", "vs.", "etc.", "prof.", "gen.", "lt.", "col.",
                  "capt.", "rev.", "inc.", "co.", "ltd.", "mt.", "ft.", "no."}


def _records(path: Path) -> list[str]:
    text = path.read_text(encoding="latin-1")  # a few files are not UTF-8; non-ASCII sentences are dropped anyway
    return re.split(r"\n%\n", text)


def _body(record: str) -> str:
    """The record's text without its attribution, whitespace collapsed."""
    lines = []
    for line in record.split("\n"):
        if line.strip().startswith("--"):
            break
        lines.append(line.strip())
    return re.sub(r"\s+", " ", " ".join(lines)).strip()


def is_clean(sentence: str) -> bool:
    words = sentence.split()
    if not MIN_WORDS <= len(words) <= MAX_WORDS or not _CLEAN.match(sentence):
        return False
    if "--" in sentence or " -" in sentence or "- " in sentence or "''" in sentence:
        return False
    if words[-1].lower() in _ABBREVIATIONS:
        return False
    if any(w.strip(",;") in _JOIN_MARKERS and not prev.endswith(":") for prev, w in zip(words, words[1:])):
        return False
    # Acronyms (TV, UNIX) are spelled or mangled by espeak and read differently by an LLM.
    return not any(len(w) > 1 and w.isupper() for w in re.findall(r"[A-Za-z]+", sentence))


def _dedup_key(sentence: str) -> str:
    return re.sub(r"[^a-z ]", "", sentence.lower())


def load_sentences(fortunes_dir: str | Path = DEFAULT_FORTUNES_DIR) -> list[str]:
    """Every clean, de-duplicated sentence, in file-name then file order (deterministic)."""
    fortunes_dir = Path(fortunes_dir)
    files = sorted(p for p in fortunes_dir.iterdir() if p.is_file() and "." not in p.name
                   and p.name not in EXCLUDED_FILES)
    if not files:
        raise FileNotFoundError(
            f"no fortune files in {fortunes_dir}: install Debian's 'fortunes' package (tools/install.sh does, as root: "
            "apt-get install fortunes) or pass --fortunes_dir"
        )
    seen: set[str] = set()
    out: list[str] = []
    for path in files:
        for record in _records(path):
            for sentence in _SENTENCE_END.split(_body(record)):
                key = _dedup_key(sentence)
                if is_clean(sentence) and key not in seen:
                    seen.add(key)
                    out.append(sentence)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--fortunes_dir", default=DEFAULT_FORTUNES_DIR)
    args = parser.parse_args(argv)
    sentences = load_sentences(args.fortunes_dir)
    sys.stdout.write("".join(s + "\n" for s in sentences))
    print(f"{len(sentences)} sentences", file=sys.stderr)


if __name__ == "__main__":
    main()
