"""Synthesise the mini recipe's train/dev/test sets with espeak-ng from real English sentences (seeded).

Usage:
    python local/make_espeak_corpus.py --data_dir data --wav_dir downloads/espeak_wav \
        [--num_train 9000 --num_dev 100 --num_test 200 --seed 0 --nj 2]

Each utterance is one sentence (local/fortune_sentences.py; no sentence occurs in two sets) read by one voice: an
English accent of espeak-ng combined with a voice variant (``en-gb-scotland+m4``), at a random speed (words per minute)
and pitch. The variants are split once by the seed: test voices use variants that never occur in train or dev, so the
test set measures generalisation to unseen voices; dev shares train's variants. espeak-ng writes 22.05 kHz; sox
converts to 16 kHz mono 16-bit, then normalises the peak to -3 dBFS (``rate 16000 gain -n -3``) so nothing clips.

Output: data/<set>/{wav.scp,text,utt2spk,spk2utt} (wav.scp holds absolute paths), data/local/espeak_<set>.tsv with the
voice, speed and pitch of every utterance, and the wavs under --wav_dir/<set>/. Transcripts keep the sentence's natural
casing and punctuation, the way an LLM reads text. Speaker = voice, e.g. ``sco_m4``; utterance id = speaker + ``-`` +
set + index, so the speaker is a prefix of the utterance id and LC_ALL=C orders both files alike (speaker ids use only
[a-z0-9_], all above ``-``). Existing wavs of the same plan are reused, so an interrupted run resumes.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import random
import shutil
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import soundfile
from fortune_sentences import DEFAULT_FORTUNES_DIR, load_sentences
from tqdm import tqdm

from blspkd.data import kaldi_dir
from blspkd.utils.logging import setup_logging

logger = logging.getLogger("blspkd")

# espeak-ng accent -> short name used in speaker ids.
ACCENTS = {
    "en-us": "us", "en-gb": "gb", "en-gb-scotland": "sco", "en-gb-x-rp": "rp", "en-gb-x-gbclan": "lan",
    "en-gb-x-gbcwmd": "wmd", "en-029": "car", "en-us-nyc": "nyc",
}
# espeak-ng voice variants (files in espeak-ng-data/voices/!v) that sound like speech; robotic, whispered, croaking and
# "fast" variants are left out.
VARIANTS = (
    "Alex Alicia Andrea Andy Annie AnxiousAndy Denis Diogo Gene Gene2 Henrique Hugo Jacky Lee Marco Mario Michael Mike "
    "Nguyen Storm adam anika antonio aunty belinda benjamin boris caleb david ed edward edward2 f1 f2 f3 f4 f5 grandma "
    "grandpa gustave iven iven2 iven3 iven4 john kaukovalta klatt klatt2 klatt3 klatt4 klatt5 klatt6 linda m1 m2 m3 m4 "
    "m5 m6 m7 m8 marcelo max michel miguel norbert pablo paul pedro quincy rob robert sandro shelby steph steph2 "
    "steph3 travis victor zac"
).split()
NUM_TEST_VARIANTS = 10
SPEED_WPM = (130, 210)  # espeak-ng -s; its default is 175
PITCH = (25, 75)  # espeak-ng -p (0-99); its default is 50
SAMPLE_RATE = 16000


@dataclass(frozen=True)
class Utterance:
    utt_id: str
    speaker: str
    voice: str  # espeak-ng -v argument, e.g. en-gb-scotland+m4
    speed: int
    pitch: int
    text: str


def split_variants(seed: int) -> tuple[list[str], list[str]]:
    """(train/dev variants, test variants), disjoint, chosen by the seed."""
    variants = list(VARIANTS)
    random.Random(f"variants-{seed}").shuffle(variants)
    return sorted(variants[NUM_TEST_VARIANTS:]), sorted(variants[:NUM_TEST_VARIANTS])


def speaker_id(accent: str, variant: str) -> str:
    return f"{ACCENTS[accent]}_{''.join(c for c in variant.lower() if c.isalnum())}"


def draw_utterance(rng: random.Random, variants: list[str], name: str, text: str) -> Utterance:
    """``text`` read by a random accent + one of ``variants`` at a random speed and pitch; id ``<speaker>-<name>``."""
    accent = rng.choice(sorted(ACCENTS))
    variant = rng.choice(variants)
    spk = speaker_id(accent, variant)
    return Utterance(utt_id=f"{spk}-{name}", speaker=spk, voice=f"{accent}+{variant}",
                     speed=rng.randint(*SPEED_WPM), pitch=rng.randint(*PITCH), text=text)


# Sets that take their sentences first from the shuffled pool, in this order; the others (train) follow.
HELD_OUT_FIRST = ("test", "dev")


def plan_corpus(sentences: list[str], sizes: dict[str, int], seed: int) -> dict[str, list[Utterance]]:
    """Assign sentences (disjoint across sets), voices, speeds and pitches to every utterance of every set.

    The held-out sets take the first sentences of the shuffled pool (test, then dev) and train the ones after them, and
    each set draws its voices from its own random stream: so a larger ``--num_train`` keeps test and dev as they are and
    extends train (the smaller train set is a prefix of the larger one), and runs with different corpus sizes compare on
    the same test speech.
    """
    need = sum(sizes.values())
    if need > len(sentences):
        raise ValueError(f"{need} utterances requested but only {len(sentences)} clean sentences are available; "
                         "lower --num_train/--num_dev/--num_test")
    order = list(sentences)
    random.Random(seed).shuffle(order)
    train_variants, test_variants = split_variants(seed)
    plan: dict[str, list[Utterance]] = {}
    start = 0
    set_order = [n for n in HELD_OUT_FIRST if n in sizes] + [n for n in sizes if n not in HELD_OUT_FIRST]
    for name in set_order:
        rng = random.Random(f"{seed}:{name}")
        variants = test_variants if name == "test" else train_variants
        plan[name] = [draw_utterance(rng, variants, f"{name}{i:05d}", text)
                      for i, text in enumerate(order[start:start + sizes[name]])]
        start += sizes[name]
    check_disjoint(plan)
    return {name: plan[name] for name in sizes}


def check_disjoint(plan: dict[str, list[Utterance]]) -> None:
    """Test voices (variants) never occur in train, and no sentence is in two sets."""
    if "test" in plan and "train" in plan:
        variant = lambda u: u.voice.split("+", 1)[1]  # noqa: E731
        shared = {variant(u) for u in plan["test"]} & {variant(u) for u in plan["train"]}
        assert not shared, f"test variants also in train: {sorted(shared)}"
    seen: dict[str, str] = {}
    for name, utts in plan.items():
        for u in utts:
            assert seen.setdefault(u.text, name) == name, f"sentence in {seen[u.text]} and {name}: {u.text!r}"


def synthesize(utt: Utterance, wav: Path) -> float:
    """Write ``wav`` (16 kHz mono 16-bit) for ``utt``; returns its duration in seconds."""
    espeak = ["espeak-ng", "-v", utt.voice, "-s", str(utt.speed), "-p", str(utt.pitch), "--stdout", utt.text]
    raw = subprocess.run(espeak, capture_output=True, check=False)
    if raw.returncode != 0 or len(raw.stdout) < 1000:
        error = raw.stderr.decode(errors="replace")
        raise RuntimeError(f"{utt.utt_id}: espeak-ng failed ({' '.join(espeak)}): {error}")
    tmp = wav.with_name(f".{wav.stem}.tmp.wav")
    # Resample before normalising (an explicit rate effect): resampling after the gain can overshoot the headroom.
    # -R seeds the dither, so the same plan gives bit-identical wavs.
    sox = ["sox", "-R", "-t", "wav", "-", "-r", str(SAMPLE_RATE), "-c", "1", "-b", "16", str(tmp),
           "rate", str(SAMPLE_RATE), "gain", "-n", "-3"]
    conv = subprocess.run(sox, input=raw.stdout, capture_output=True, check=False)
    if conv.returncode != 0:
        raise RuntimeError(f"{utt.utt_id}: sox failed ({' '.join(sox)}): {conv.stderr.decode(errors='replace')}")
    os.replace(tmp, wav)
    return soundfile.info(str(wav)).duration


def _synthesize_job(job: tuple[Utterance, str]) -> tuple[float, bool]:
    utt, wav = job
    path = Path(wav)
    if path.is_file():
        return soundfile.info(wav).duration, False
    return synthesize(utt, path), True


def require_tools() -> None:
    for tool in ("espeak-ng", "sox"):
        if shutil.which(tool) is None:
            sys.exit(f"{tool} not found: install it (tools/install.sh does, as root: apt-get install espeak-ng sox)")


def synthesize_plan(plan: dict[str, list[Utterance]], wav_root: Path, nj: int) -> None:
    """The wavs of every utterance of ``plan`` under ``wav_root/<set>/<utt_id>.wav`` in ``nj`` processes. Wavs are
    reused only for exactly the same plan (same seed, sizes, sentences and voices), so an interrupted run resumes;
    ``wav_root`` holding another plan's wavs is emptied first."""
    start = time.time()
    digest = hashlib.sha256(json.dumps({k: [asdict(u) for u in v] for k, v in plan.items()}).encode()).hexdigest()
    stamp = wav_root / "plan.sha256"
    if wav_root.exists() and (not stamp.is_file() or stamp.read_text().strip() != digest):
        logger.info("removing %s: it holds wavs of another plan", wav_root)
        shutil.rmtree(wav_root)
    for name in plan:
        (wav_root / name).mkdir(parents=True, exist_ok=True)
    stamp.write_text(digest + "\n")

    jobs = [(u, str(wav_root / name / f"{u.utt_id}.wav")) for name, utts in plan.items() for u in utts]
    total, made = 0.0, 0
    with ProcessPoolExecutor(max_workers=nj) as pool:
        for duration, new in tqdm(pool.map(_synthesize_job, jobs, chunksize=8), total=len(jobs), desc="espeak-ng",
                                  mininterval=5, file=sys.stderr):
            total += duration
            made += new
    elapsed = time.time() - start
    logger.info("synthesised %d wavs (%d reused), %.1f h of speech, in %.1f s with %d jobs (%.0fx real time)",
                made, len(jobs) - made, total / 3600, elapsed, nj, total / max(elapsed, 1e-9))


def write_data_dir(data_dir: Path, utts: list[Utterance], wav_dir: Path) -> None:
    kaldi_dir.write_data_dir(data_dir, {u.utt_id: u.speaker for u in utts},
                             **{"wav.scp": {u.utt_id: str(wav_dir / f"{u.utt_id}.wav") for u in utts}},
                             text={u.utt_id: u.text for u in utts})


def write_plan(path: Path, utts: list[Utterance]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fields = list(asdict(utts[0])) if utts else []
    rows = sorted(utts, key=lambda u: u.utt_id)
    lines = ["\t".join(fields)] + ["\t".join(str(v) for v in asdict(u).values()) for u in rows]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data_dir", default="data", help="data dirs go to DATA_DIR/<set> (default: %(default)s)")
    parser.add_argument("--wav_dir", default="downloads/espeak_wav",
                        help="wavs go to WAV_DIR/<set> (default: %(default)s)")
    parser.add_argument("--num_train", type=int, default=9000)
    parser.add_argument("--num_dev", type=int, default=100)
    parser.add_argument("--num_test", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--nj", type=int, default=os.cpu_count() or 1, help="parallel synthesis processes")
    parser.add_argument("--fortunes_dir", default=DEFAULT_FORTUNES_DIR)
    args = parser.parse_args(argv)
    setup_logging()
    for name in ("num_train", "num_dev", "num_test", "nj"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1, got {getattr(args, name)}")
    require_tools()

    sentences = load_sentences(args.fortunes_dir)
    sizes = {"train": args.num_train, "dev": args.num_dev, "test": args.num_test}
    plan = plan_corpus(sentences, sizes, args.seed)
    logger.info("%d clean sentences; planned %s utterances", len(sentences),
                ", ".join(f"{k} {len(v)}" for k, v in plan.items()))

    wav_root = Path(args.wav_dir).resolve()
    synthesize_plan(plan, wav_root, args.nj)
    for name, utts in plan.items():
        write_data_dir(Path(args.data_dir) / name, utts, wav_root / name)
        write_plan(Path(args.data_dir) / "local" / f"espeak_{name}.tsv", utts)


if __name__ == "__main__":
    main()
