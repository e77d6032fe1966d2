"""Raw-audio dump dirs (``--feats_type raw``): stage 2 writes 16 kHz mono audio files instead of log-mel features.

Stage 2 with ``--feats_type raw`` (blspkd/data/feature_dump.py) reads every utterance as the fbank path does (pipes and
segments resolved, other rates resampled, channels averaged, the same error/skip rules and the same duration filter)
and writes each kept utterance as one 16-bit PCM file, FLAC (about half the size of WAV for speech) or WAV, under
``<dump>/shards/audio.J/`` (ESPnet's ``format_wav_scp.py`` does the same). The dump dir then has ``wav.scp`` (utterance
-> file, no ``segments``), ``utt2num_samples`` and ``utt2num_frames`` (= samples // 160, the frames the log-mel of the
audio has, so batching, the duration statistics and every later stage read the same lengths as with fbank).
Training, teacher data and decoding compute the log-mel from the audio on the model's device
(``WhisperLogMel.batch``, blspkd/data/mel.py).

16-bit PCM is exact for 16-bit 16 kHz sources (LibriSpeech, most corpora): the samples read back are the samples read
from the source. Resampled or downmixed audio is rounded to 16 bits (quantisation noise at -96 dBFS); samples outside
[-1, 1) are clipped and the clipped utterances counted.
"""
from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path

import numpy as np
import soundfile as sf

from blspkd.data.kaldi_dir import DataDirError, read_kv, write_kv

logger = logging.getLogger(__name__)

AUDIO_FORMATS = {"flac": "FLAC", "wav": "WAV"}
FEATS_TYPES = ("fbank", "raw")


def write_audio(out_dir: str | Path, scp: str | Path, items: Iterable[tuple[str, np.ndarray]], audio_format: str,
                sample_rate: int) -> tuple[dict[str, int], int]:
    """Write (utterance, mono float32 waveform) pairs as ``<out_dir>/<utt>.<audio_format>`` (16-bit PCM) and index them
    in ``scp`` (overwritten; paths as given, like feats.scp). Returns (utterance -> number of samples, number of
    utterances that had samples clipped to [-1, 1))."""
    if audio_format not in AUDIO_FORMATS:
        raise DataDirError(f"--audio_format must be one of {sorted(AUDIO_FORMATS)}, got '{audio_format}'")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    samples: dict[str, int] = {}
    paths: dict[str, str] = {}
    clipped = 0
    for utt, wave in items:
        if "/" in utt or utt.startswith("."):
            raise DataDirError(f"utterance id '{utt}' cannot name an audio file (it holds '/' or starts with '.'): "
                               "use --feats_type fbank or rename the utterance")
        # Quantised here, as soundfile reads 16-bit PCM back (k / 32768): a 16-bit source round-trips exactly.
        pcm = np.rint(np.asarray(wave, dtype=np.float64) * 32768.0)
        if pcm.size and (pcm.max() > 32767 or pcm.min() < -32768):
            pcm = np.clip(pcm, -32768, 32767)
            clipped += 1
        path = out / f"{utt}.{audio_format}"
        sf.write(path, pcm.astype(np.int16), sample_rate, format=AUDIO_FORMATS[audio_format], subtype="PCM_16")
        samples[utt] = len(wave)
        paths[utt] = str(path)
    write_kv(scp, paths)
    return samples, clipped


def is_raw_dump(dump_dir: str | Path) -> bool:
    """Whether ``dump_dir`` was written by stage 2 with ``--feats_type raw`` (audio and sample counts, no feats.scp)."""
    d = Path(dump_dir)
    return (d / "utt2num_samples").is_file() and not (d / "feats.scp").is_file()


class RawAudio(Mapping):
    """Lazy mapping utterance -> float32 waveform of a raw dump dir's ``wav.scp`` (files written by ``write_audio``).

    A file whose rate, channel count or length differs from what stage 2 recorded is an error naming it and the fix.
    """

    def __init__(self, dump_dir: str | Path, sample_rate: int = 16000):
        self.path = Path(dump_dir)
        self.sample_rate = sample_rate
        self.wavs = read_kv(self.path / "wav.scp")
        self.num_samples = {k: int(v) for k, v in read_kv(self.path / "utt2num_samples").items()}

    def __getitem__(self, key: str) -> np.ndarray:
        where = self.wavs[key]
        fix = "re-run stage 2 for this dir (--feats_type raw)"
        try:
            wave, rate = sf.read(where, dtype="float32", always_2d=True)
        except (sf.LibsndfileError, RuntimeError, TypeError) as e:
            raise DataDirError(f"{self.path / 'wav.scp'}: cannot read {where} of utterance {key}: {e}. Relative "
                               f"paths are relative to the recipe directory: run from there, or {fix}") from None
        if rate != self.sample_rate or wave.shape[1] != 1 or wave.shape[0] != self.num_samples.get(key):
            raise DataDirError(
                f"{self.path / 'wav.scp'}: {where} of utterance {key} is {wave.shape[0]} samples x {wave.shape[1]} "
                f"channel(s) at {rate} Hz, utt2num_samples says {self.num_samples.get(key)} x 1 at "
                f"{self.sample_rate} Hz; {fix}"
            )
        return wave[:, 0]

    def __iter__(self) -> Iterator[str]:
        return iter(self.wavs)

    def __len__(self) -> int:
        return len(self.wavs)
