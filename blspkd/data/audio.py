"""Reading the audio of a Kaldi data dir: ``wav.scp`` paths or pipe commands, optional ``segments``, 16 kHz mono out.

* ``wav.scp`` values are file paths, or shell commands ending in ``|`` whose standard output is a WAV/FLAC/... stream
  (``sox in.flac -t wav - |``); both are decoded with soundfile, samples as float32 in [-1, 1).
* Multi-channel audio is downmixed to mono by averaging the channels.
* Other sample rates are resampled to the target rate with ``scipy.signal.resample_poly`` (polyphase FIR, Kaiser window,
  anti-aliasing included; exact rational ratio, e.g. 441/160 for 44.1 kHz), chosen over rejecting such input because
  corpora mix rates, and over FFT resampling because it has no wrap-around artefacts at the edges. Counts are logged.
* Every read is checked: the samples decoded must be as many as the WAV header (or, for other formats, soundfile's
  frame count) declares, so a truncated file or a pipe whose output was cut off is not read short in silence (pipes of
  unknown length, whose header holds a streaming placeholder size, have nothing to compare with); every sample must be
  finite (float audio can hold NaN/inf, which would give NaN features).
* A missing, unreadable, truncated, empty or non-finite recording (or a directory in its place), a failing pipe command
  or a segment outside its recording raises AudioError naming ``wav.scp:line`` (or ``segments:line``) and what is
  wrong; with ``skip_bad=True`` the utterance is skipped, logged and counted per reason (``AudioError.reason``) instead.
"""
from __future__ import annotations

import io
import logging
import math
import shlex
import shutil
import struct
import subprocess
import tempfile
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
from scipy.signal import resample_poly

from blspkd.data.kaldi_dir import DataDirError, parse_kv, read_kv, read_segments

logger = logging.getLogger(__name__)
# A segment may end this far beyond its recording (rounding in segment files) before it is an error; it is then clipped.
SEGMENT_END_TOLERANCE_S = 0.1


# Data-chunk sizes that streaming WAV writers put in the header when the length is not known yet (ffmpeg, sox writing
# to a pipe): such a header declares nothing.
STREAMING_WAV_SIZES = (0, 0xFFFFFFFF, 0x7FFFF000)
_BLOCK = 1 << 20  # frames per read: a header claiming 2**62 frames must not allocate them


class AudioError(RuntimeError):
    """Audio that cannot be read; the message names the scp file and line. ``reason``: its skip-count category."""

    reason = "unreadable audio"


class UndecodableAudio(AudioError):
    """soundfile does not know the container or codec (a program such as ffmpeg may)."""


class TruncatedAudio(AudioError):
    reason = "truncated or corrupt audio"


class NonFiniteAudio(AudioError):
    reason = "non-finite samples"


@dataclass
class AudioStats:
    read: int = 0
    resampled: int = 0
    downmixed: int = 0
    skipped: Counter = None  # reason -> count

    def __post_init__(self):
        self.skipped = Counter() if self.skipped is None else self.skipped


def resample(wave: np.ndarray, orig_sr: int, target_sr: int) -> np.ndarray:
    """Polyphase resampling by the exact rational ratio target_sr/orig_sr (first axis is time)."""
    if orig_sr == target_sr:
        return wave
    g = math.gcd(orig_sr, target_sr)
    return resample_poly(wave, target_sr // g, orig_sr // g, axis=0).astype(np.float32)


def path_problem(path: str) -> str | None:
    """What keeps ``path`` from being read as audio (missing, a directory, not a regular file), or None."""
    p = Path(path)
    if p.is_dir():
        return "a directory, not an audio file"
    if not p.exists():
        return "file not found"
    return None if p.is_file() else "not a regular file"


def _wav_declared_frames(f) -> int | None:
    """Frames the RIFF/WAVE header's data chunk declares (None: not a WAV, or a streaming placeholder size)."""
    head = f.read(12)
    if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
        return None
    block_align = 0
    while True:
        chunk = f.read(8)
        if len(chunk) < 8:
            return None
        cid, size = chunk[:4], struct.unpack("<I", chunk[4:])[0]
        if cid == b"data":
            return size // block_align if block_align and size not in STREAMING_WAV_SIZES else None
        body = f.read(size + size % 2) if cid == b"fmt " else f.seek(size + size % 2, 1)
        if cid == b"fmt " and len(body) >= 14:
            block_align = struct.unpack("<H", body[12:14])[0]


def decode_audio(source: str) -> tuple[np.ndarray, int]:
    """Decode a ``wav.scp`` value: a path, or a command ending in ``|`` (run through the shell). Returns (samples x
    channels float32, sample rate). Raises AudioError with a description (the caller adds file:line)."""
    source = source.strip()
    if source.endswith("|"):
        cmd = source[:-1].strip()
        proc = subprocess.run(cmd, shell=True, capture_output=True)
        if proc.returncode != 0:
            err = proc.stderr.decode("utf-8", "replace").strip().splitlines()
            raise AudioError(f"command '{cmd}' failed with exit code {proc.returncode}: {err[-1] if err else ''}")
        if not proc.stdout:
            raise AudioError(f"command '{cmd}' wrote no audio")
        handle: io.BytesIO | str = io.BytesIO(proc.stdout)
        what = f"output of command '{cmd}'"
        declared = _wav_declared_frames(io.BytesIO(proc.stdout))
    else:
        problem = path_problem(source)
        if problem:
            raise AudioError(f"{problem}: {source}")
        handle = source
        what = f"file {source}"
        with open(source, "rb") as f:
            declared = _wav_declared_frames(f)
    return _read_checked(handle, what, declared)


def _read_checked(handle: io.BytesIO | str, what: str, declared: int | None,
                  max_seconds: float | None = None) -> tuple[np.ndarray, int]:
    """Decode with soundfile and check the samples: as many as ``declared`` (or soundfile's frame count), all finite.
    ``max_seconds``: read at most this much (then only a shortfall within it counts as truncation)."""
    try:
        snd = sf.SoundFile(handle)
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError) as e:
        raise UndecodableAudio(f"cannot decode {what}: {e}") from None
    blocks = []
    with snd:
        rate = snd.samplerate
        if declared is None and 0 < snd.frames < 2**62:
            declared = snd.frames  # the count of formats other than WAV (FLAC's STREAMINFO, ...)
        limit = round(max_seconds * rate) if max_seconds else None
        got = 0
        try:
            while limit is None or got < limit:
                block = snd.read(_BLOCK if limit is None else min(_BLOCK, limit - got), dtype="float32",
                                 always_2d=True)
                if not len(block):
                    break
                blocks.append(block)
                got += len(block)
        except (sf.LibsndfileError, RuntimeError) as e:
            raise TruncatedAudio(f"{what} is truncated or corrupt: decoding failed after {got} samples ({e})") from None
    data = np.concatenate(blocks) if blocks else np.zeros((0, snd.channels), np.float32)
    if data.shape[0] == 0:
        raise AudioError(f"{what} holds no samples")
    if declared is not None and data.shape[0] < min(declared, limit or declared):
        raise TruncatedAudio(f"{what} is truncated: its header declares {declared} samples ({declared / rate:.3f} s) "
                             f"but it holds {data.shape[0]} ({data.shape[0] / rate:.3f} s)")
    finite = np.isfinite(data).all(axis=1)
    if not finite.all():
        first = int(np.argmin(finite))
        raise NonFiniteAudio(f"{what} holds {int((~finite).sum())} non-finite sample(s) (NaN/inf), the first at "
                             f"{first / rate:.3f} s")
    return data, rate


class AudioReader:
    """Iterate 16 kHz (``sample_rate``) mono float32 waveforms of a data dir's utterances.

    ``for key, wave in reader.iter(utts)``; the stats (resampled/downmixed/skipped counts) are in ``reader.stats``.
    With segments, consecutive utterances of one recording decode it once.
    """

    def __init__(self, data_dir: str | Path, sample_rate: int = 16000, skip_bad: bool = False):
        d = Path(data_dir)
        self.wav_scp = d / "wav.scp"
        self.sample_rate = sample_rate
        self.skip_bad = skip_bad
        self.stats = AudioStats()
        self.skipped: dict[str, str] = {}  # utterance -> reason (skip_bad)
        self.wavs = read_kv(self.wav_scp)
        self.wav_line = {k: n for n, k, _ in parse_kv(self.wav_scp).entries}
        self.segments = read_segments(d / "segments") if (d / "segments").is_file() else None
        if self.segments is not None:
            self.seg_line = {k: n for n, k, _ in parse_kv(d / "segments").entries}
            missing = [u for u, (r, _, _) in self.segments.items() if r not in self.wavs]
            if missing:
                raise DataDirError(
                    f"{d}/segments:{self.seg_line[missing[0]]}: recording '{self.segments[missing[0]][0]}' of "
                    f"utterance '{missing[0]}' is not in {self.wav_scp} ({len(missing)} such utterances). "
                    f"Fix: run utils/fix_data_dir.sh {d}"
                )
        self._cache: tuple[str, np.ndarray | AudioError] | None = None

    def location(self, utt: str) -> str:
        """``<file>:<line>`` of the line that gives the utterance's audio (its segments line, or its wav.scp line)."""
        if self.segments is not None:
            return f"{self.wav_scp.parent}/segments:{self.seg_line[utt]}"
        return f"{self.wav_scp}:{self.wav_line[utt]}"

    def utterances(self) -> list[str]:
        return sorted(self.segments if self.segments is not None else self.wavs)

    def _recording(self, reco: str) -> np.ndarray:
        """Mono waveform at the target rate of one recording (cached: segments of a recording come together)."""
        if self._cache is None or self._cache[0] != reco:
            try:
                data, rate = decode_audio(self.wavs[reco])
            except AudioError as e:
                result: np.ndarray | AudioError = type(e)(  # keeps the kind, hence the skip reason
                    f"{self.wav_scp}:{self.wav_line[reco]}: recording '{reco}': {e}. Fix: correct the wav.scp line, "
                    "or drop the utterance (utils/fix_data_dir.sh after removing it), or pass --skip_bad_audio true"
                )
            else:
                if data.shape[1] > 1:
                    data = data.mean(axis=1, keepdims=True)
                    self.stats.downmixed += 1
                if rate != self.sample_rate:
                    data = resample(data, rate, self.sample_rate)
                    self.stats.resampled += 1
                result = np.ascontiguousarray(data[:, 0], dtype=np.float32)
            self._cache = (reco, result)
        if isinstance(self._cache[1], AudioError):
            raise self._cache[1]
        return self._cache[1]

    def read(self, utt: str) -> np.ndarray:
        """The waveform of one utterance; raises AudioError (file:line and the fix) when it cannot be read."""
        if self.segments is None:
            if utt not in self.wavs:
                raise AudioError(f"{self.wav_scp}: no entry for utterance '{utt}'")
            return self._recording(utt)
        if utt not in self.segments:
            raise AudioError(f"{self.wav_scp.parent}/segments: no entry for utterance '{utt}'")
        reco, start, end = self.segments[utt]
        wave = self._recording(reco)
        duration = len(wave) / self.sample_rate
        if end > duration + SEGMENT_END_TOLERANCE_S or start >= duration:
            raise AudioError(
                f"{self.wav_scp.parent}/segments:{self.seg_line[utt]}: utterance '{utt}' spans {start}-{end} s but "
                f"recording '{reco}' lasts {duration:.3f} s. Fix: correct the segment times"
            )
        return wave[round(start * self.sample_rate): round(end * self.sample_rate)]

    def iter(self, utts: Iterable[str]) -> Iterator[tuple[str, np.ndarray]]:
        """Yield (utt, waveform); bad audio raises AudioError, or is skipped, logged and counted with ``skip_bad``."""
        for utt in utts:
            try:
                wave = self.read(utt)
            except AudioError as e:
                if not self.skip_bad:
                    raise
                logger.warning("skipping utterance '%s': %s", utt, e)
                self.stats.skipped[e.reason] += 1
                self.skipped[utt] = e.reason
                continue
            self.stats.read += 1
            yield utt, wave


# ---- one recording from a file or from bytes (inference: blspkd.bin.infer, blspkd.api, blspkd.serve) ----------------
def to_mono(data: np.ndarray, rate: int, sample_rate: int) -> np.ndarray:
    """(samples, channels) at ``rate`` -> contiguous float32 mono at ``sample_rate`` (channels averaged)."""
    wave = data.mean(axis=1) if data.shape[1] > 1 else data[:, 0]
    return np.ascontiguousarray(resample(wave, rate, sample_rate), dtype=np.float32)


def _ffmpeg_decode(path: str, max_seconds: float | None = None) -> tuple[np.ndarray, int]:
    # soundfile does not know every container/codec (m4a, opus in webm as browsers record it, ...); ffmpeg decodes
    # them to WAV on a pipe.
    limit = f" -t {max_seconds}" if max_seconds else ""
    return decode_audio(f"ffmpeg -nostdin -v error -i {shlex.quote(path)}{limit} -f wav -acodec pcm_s16le - |")


def read_audio(path: str | Path, sample_rate: int = 16000) -> np.ndarray:
    """Mono float32 samples at ``sample_rate`` of an audio file in any format soundfile or, failing that, ffmpeg reads;
    AudioError naming the file when it cannot be read."""
    path = str(path)
    problem = path_problem(path)
    if problem:
        raise AudioError(f"cannot read audio file {path}: {problem}")
    try:
        data, rate = decode_audio(path)
    except UndecodableAudio as sf_error:  # truncated or non-finite audio is not handed on: ffmpeg would read it short
        if shutil.which("ffmpeg") is None:
            raise AudioError(f"cannot read audio file {path}: {sf_error} (and ffmpeg, which reads more formats, is "
                             "not installed)") from None
        try:
            data, rate = _ffmpeg_decode(path)
        except AudioError as ff_error:
            raise AudioError(f"cannot read audio file {path}: neither soundfile nor ffmpeg can decode it "
                             f"({sf_error}; {ff_error})") from None
    return to_mono(data, rate, sample_rate)


def read_audio_bytes(data: bytes, sample_rate: int = 16000, what: str = "the audio",
                     max_seconds: float | None = None) -> np.ndarray:
    """``read_audio`` of an encoded file held in memory (an upload: WAV, MP3, FLAC, OGG, WebM, ...); AudioError saying
    what ``what`` is when it cannot be decoded. ``max_seconds``: decode at most this much (a few compressed megabytes
    can hold hours of audio)."""
    if not data:
        raise AudioError(f"{what} is empty")
    try:
        samples, rate = _read_checked(io.BytesIO(data), what, _wav_declared_frames(io.BytesIO(data)), max_seconds)
    except UndecodableAudio as sf_error:
        if shutil.which("ffmpeg") is None:
            raise AudioError(f"cannot decode {what}: {sf_error} (and ffmpeg, which reads more formats, is not "
                             "installed)") from None
        # a file, not a pipe: containers such as MP4 keep their index at the end, which ffmpeg cannot seek to on stdin
        with tempfile.NamedTemporaryFile(prefix="blspkd-audio-") as tmp:
            tmp.write(data)
            tmp.flush()
            try:
                samples, rate = _ffmpeg_decode(tmp.name, max_seconds)
            except AudioError:
                raise AudioError(f"cannot decode {what}: neither soundfile nor ffmpeg recognises it as audio "
                                 f"({len(data)} bytes; soundfile: {sf_error})") from None
    return to_mono(samples, rate, sample_rate)
