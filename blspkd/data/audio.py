"""Reading the audio of a Kaldi data dir: ``wav.scp`` paths or pipe commands, optional ``segments``, 16 kHz mono out.

* ``wav.scp`` values are file paths, or shell commands ending in ``|`` whose standard output is a WAV/FLAC/... stream
  (``sox in.flac -t wav - |``); both are decoded with soundfile, samples as float32 in [-1, 1).
* Multi-channel audio is downmixed to mono by averaging the channels.
* Other sample rates are resampled to the target rate with ``scipy.signal.resample_poly`` (polyphase FIR, Kaiser window,
  anti-aliasing included; exact rational ratio, e.g. 441/160 for 44.1 kHz), chosen over rejecting such input because
  corpora mix rates, and over FFT resampling because it has no wrap-around artefacts at the edges. Counts are logged.
* A missing, unreadable or empty recording, a failing pipe command or a segment outside its recording raises AudioError
  naming ``wav.scp:line`` (or ``segments:line``) and what is wrong; with ``skip_bad=True`` the utterance is skipped,
  logged, and counted instead.
"""
from __future__ import annotations

import io
import logging
import math
import shlex
import shutil
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


class AudioError(RuntimeError):
    """Audio that cannot be read; the message names the scp file and line."""


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
    else:
        if not Path(source).is_file():
            raise AudioError(f"file not found: {source}")
        handle = source
        what = f"file {source}"
    try:
        data, rate = sf.read(handle, dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, TypeError) as e:
        raise AudioError(f"cannot decode {what}: {e}") from None
    if data.shape[0] == 0:
        raise AudioError(f"{what} holds no samples")
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

    def utterances(self) -> list[str]:
        return sorted(self.segments if self.segments is not None else self.wavs)

    def _recording(self, reco: str) -> np.ndarray:
        """Mono waveform at the target rate of one recording (cached: segments of a recording come together)."""
        if self._cache is None or self._cache[0] != reco:
            try:
                data, rate = decode_audio(self.wavs[reco])
            except AudioError as e:
                result: np.ndarray | AudioError = AudioError(
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
                self.stats.skipped["unreadable audio"] += 1
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
    if not Path(path).is_file():
        raise AudioError(f"cannot read audio file {path}: file not found")
    try:
        data, rate = decode_audio(path)
    except AudioError as sf_error:
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
        with sf.SoundFile(io.BytesIO(data)) as f:
            frames = round(max_seconds * f.samplerate) if max_seconds else -1
            samples, rate = f.read(frames, dtype="float32", always_2d=True), f.samplerate
    except (sf.LibsndfileError, RuntimeError, TypeError) as sf_error:
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
    if samples.shape[0] == 0:
        raise AudioError(f"{what} holds no samples")
    return to_mono(samples, rate, sample_rate)
