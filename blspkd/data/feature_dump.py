"""Stage 2: Whisper log-mel features of a data dir, computed in shards and merged into a dump dir.

The shard protocol is blspkd/utils/shards.py's. ``extract_shard`` computes shard J of N into
``<out>/shards/feats.J.{ark,scp}``, ``utt2num_frames.J`` and ``dropped.J`` (utterance -> reason), then writes the
marker ``.completed.J`` (the settings and the shard's statistics). A shard whose marker exists with the same settings
is skipped, so re-running every job after a killed one redoes only the missing shards. ``merge_shards`` checks that
every shard is done, writes ``<out>/feats.scp`` and ``utt2num_frames`` and the data dir's files restricted to the kept
utterances, validates the result and writes ``<out>/.completed`` (the totals).

With ``feats_type="raw"`` the shards hold 16 kHz mono audio files instead (``shards/audio.J/``, ``wav.J.scp``,
``utt2num_samples.J``; blspkd/data/audio_dump.py) and the dump dir gets ``wav.scp`` and ``utt2num_samples``; the
reading, the error and skip rules, the duration filter and ``utt2num_frames`` are the same.
"""
from __future__ import annotations

import hashlib
import logging
import socket
import time
from collections import Counter
from pathlib import Path

import torch
from tqdm import tqdm

from blspkd.data.audio import AudioReader, NonFiniteAudio
from blspkd.data.audio_dump import FEATS_TYPES, write_audio
from blspkd.data.data_dir_ops import load_tables, write_restricted
from blspkd.data.feats_io import write_feats
from blspkd.data.kaldi_dir import RECO_FILES, SPK_FILES, UTT_FILES, DataDirError, check_data_dir, read_kv, write_kv
from blspkd.data.mel import WhisperLogMel
from blspkd.utils.shards import MARKER, ShardError, Shards, shard_keys, write_marker

logger = logging.getLogger(__name__)


def shard_paths(shards: Shards, shard: int, raw: bool = False) -> dict[str, Path]:
    """The output files of one shard: features (ark, scp), or with ``raw`` the audio index (scp) and sample counts."""
    signal = {"scp": shards.dir / f"wav.{shard}.scp", "samples": shards.file("utt2num_samples", shard)} if raw else {
        "ark": shards.dir / f"feats.{shard}.ark", "scp": shards.dir / f"feats.{shard}.scp"}
    return {**signal, "frames": shards.file("utt2num_frames", shard), "dropped": shards.file("dropped", shard)}


def _duration_filter(seconds: float, num_samples: int, mel: WhisperLogMel, min_s: float | None, max_s: float) -> str:
    if num_samples < mel.min_samples:
        return f"too short for one frame (< {mel.min_samples} samples)"
    if min_s is not None and seconds < min_s:
        return f"shorter than min_duration {min_s} s"
    if seconds > max_s:
        return f"longer than max_duration {max_s} s"
    return ""


def _inputs_digest(data_dir: str | Path, utts: list[str]) -> str:
    """Hash of the shard's utterance ids and their audio locations (wav.scp / segments lines)."""
    d = Path(data_dir)
    wav = read_kv(d / "wav.scp")
    segments = read_kv(d / "segments") if (d / "segments").is_file() else None
    h = hashlib.sha1()
    for utt in utts:
        where = f"{segments[utt]} {wav[segments[utt].split()[0]]}" if segments else wav[utt]
        h.update(f"{utt} {where}\n".encode())
    return h.hexdigest()


def extract_shard(
    data_dir: str | Path,
    out_dir: str | Path,
    feature_extractor: str | Path,
    num_shards: int,
    shard: int,
    min_duration: float | None = None,
    max_duration: float | None = None,
    skip_bad_audio: bool = False,
    num_threads: int = 1,
    feats_type: str = "fbank",
    audio_format: str = "flac",
) -> dict:
    """Compute shard ``shard`` (1-based) of ``num_shards``; returns the shard's statistics (also in its marker)."""
    if not 1 <= shard <= num_shards:
        raise DataDirError(f"--shard {shard} is outside 1..{num_shards} (--num_shards {num_shards})")
    if feats_type not in FEATS_TYPES:
        raise DataDirError(f"--feats_type must be one of {', '.join(FEATS_TYPES)}, got '{feats_type}'")
    if Path(out_dir).resolve() == Path(data_dir).resolve():
        raise DataDirError(f"--out_dir must differ from --data_dir ({data_dir})")
    mel = WhisperLogMel.from_pretrained(feature_extractor)
    max_duration = float(mel.chunk_length) if max_duration is None else max_duration
    check_data_dir(data_dir)
    utts = shard_keys(read_kv(Path(data_dir) / "utt2spk"), shard, num_shards)
    signature = {
        "data_dir": str(Path(data_dir).resolve()), "feature_extractor": str(Path(feature_extractor).resolve()),
        "n_mels": mel.n_mels, "num_shards": num_shards, "min_duration": min_duration, "max_duration": max_duration,
        "shard_inputs_sha1": _inputs_digest(data_dir, utts),  # same settings but other audio: recompute
    }
    raw = feats_type == "raw"
    if raw:  # fbank adds no key: shards written before raw existed stay valid
        signature.update(feats_type=feats_type, audio_format=audio_format)
    shards = Shards(out_dir, num_shards)
    paths = shard_paths(shards, shard, raw)
    previous = shards.done(shard, signature)
    if previous is not None and all(p.is_file() for p in paths.values()):
        logger.info("shard %d/%d already done (%s); skipping", shard, num_shards, shards.marker(shard))
        return previous["stats"]
    if previous is not None:
        logger.info("shard %d/%d: outputs missing since %s was written; redoing it", shard, num_shards,
                    shards.marker(shard))
    shards.dir.mkdir(parents=True, exist_ok=True)

    torch.set_num_threads(num_threads)
    reader = AudioReader(data_dir, sample_rate=mel.sampling_rate, skip_bad=skip_bad_audio)
    frames: dict[str, int] = {}
    dropped: dict[str, str] = {}
    audio_s = 0.0
    mel_time = 0.0

    def kept_audio():
        nonlocal audio_s
        bar = tqdm(reader.iter(utts), total=len(utts), desc=f"shard {shard}/{num_shards}", unit="utt",
                   mininterval=5.0, disable=None)
        for utt, wave in bar:
            seconds = len(wave) / mel.sampling_rate
            reason = _duration_filter(seconds, len(wave), mel, min_duration, max_duration)
            if reason:
                dropped[utt] = reason
                continue
            audio_s += seconds
            yield utt, wave

    def features():
        nonlocal mel_time
        for utt, wave in kept_audio():
            t0 = time.perf_counter()
            try:
                feats = mel(wave)
            except NonFiniteAudio as e:
                where = f"{reader.location(utt)}: utterance '{utt}'"
                if not skip_bad_audio:
                    raise NonFiniteAudio(f"{where}: {e}. Fix: correct or drop the recording, or pass "
                                         "--skip_bad_audio true") from None
                logger.warning("skipping %s: %s", where, e)
                dropped[utt] = "non-finite features"
                continue
            mel_time += time.perf_counter() - t0
            yield utt, feats

    start = time.perf_counter()
    clipped = 0
    if raw:
        samples, clipped = write_audio(shards.dir / f"audio.{shard}", paths["scp"], kept_audio(), audio_format,
                                       mel.sampling_rate)
        write_kv(paths["samples"], {k: str(v) for k, v in samples.items()})
        frames = {k: mel.num_frames(n) for k, n in samples.items()}
    else:
        frames = write_feats(paths["ark"], paths["scp"], features())
    wall = time.perf_counter() - start
    dropped.update(reader.skipped)  # audio skipped with skip_bad_audio is dropped too, with its reason
    write_kv(paths["frames"], {k: str(v) for k, v in frames.items()})
    write_kv(paths["dropped"], dropped)
    reasons = Counter(dropped.values())
    stats = {
        "utterances": len(utts), "kept": len(frames), "dropped": dict(reasons),
        "audio_seconds": round(audio_s, 3), "wall_seconds": round(wall, 3), "mel_seconds": round(mel_time, 3),
        "num_threads": num_threads, "resampled": reader.stats.resampled, "downmixed": reader.stats.downmixed,
        "clipped": clipped,
        "xrt_per_core": round(audio_s / max(wall, 1e-9) / num_threads, 1), "host": socket.gethostname(),
    }
    shards.finish(shard, signature, stats=stats)
    logger.info(
        "shard %d/%d: %d of %d utterances kept, %.1f s of audio in %.1f s (%.1f s log-mel) = %.0fx real time per core "
        "(%d thread(s)); resampled %d, downmixed %d recording(s)", shard, num_shards, len(frames), len(utts), audio_s,
        wall, mel_time, stats["xrt_per_core"], num_threads, reader.stats.resampled, reader.stats.downmixed,
    )
    if clipped:
        logger.warning("shard %d/%d: %d utterance(s) had samples outside [-1, 1) clipped when written as 16-bit audio",
                       shard, num_shards, clipped)
    for reason, n in sorted(reasons.items()):
        logger.info("shard %d/%d: dropped %d utterance(s): %s", shard, num_shards, n, reason)
    return stats


def merge_shards(data_dir: str | Path, out_dir: str | Path, num_shards: int) -> dict:
    """Merge the done shards into the complete dump dir ``out_dir``; returns the totals (also in ``.completed``)."""
    out = Path(out_dir)
    (out / MARKER).unlink(missing_ok=True)
    shards = Shards(out, num_shards)
    try:
        stats = [m["stats"] for m in shards.collect(
            f"run python -m blspkd.bin.extract_feats --data_dir {data_dir} --out_dir {out_dir} --feature_extractor "
            f"DIR --num_shards {num_shards} --shard J for each missing J (stage 2 again does exactly that)")]
    except ShardError as e:
        raise DataDirError(str(e)) from None
    raw = shards.signature().get("feats_type") == "raw"
    feats: dict[str, str] = {}
    frames: dict[str, str] = {}
    samples: dict[str, str] = {}
    dropped: Counter = Counter()
    for j in range(1, num_shards + 1):
        p = shard_paths(shards, j, raw)
        feats.update(read_kv(p["scp"]) if p["scp"].stat().st_size else {})
        frames.update(read_kv(p["frames"]) if p["frames"].stat().st_size else {})
        samples.update(read_kv(p["samples"]) if raw and p["samples"].stat().st_size else {})
        dropped.update(read_kv(p["dropped"]).values() if p["dropped"].stat().st_size else [])
    tables = load_tables(data_dir)
    if raw:  # one audio file per utterance: the recordings' tables no longer apply
        for name in ("segments", "reco2dur", "reco2file_and_channel"):
            tables.pop(name, None)
        tables["wav.scp"] = feats
        tables["utt2num_samples"] = samples
    else:
        tables["feats.scp"] = feats
    tables["utt2num_frames"] = frames
    for name in (*UTT_FILES, *RECO_FILES, *SPK_FILES):  # files of an earlier merge that the source no longer has
        if name not in tables and name != "spk2utt":
            (out / name).unlink(missing_ok=True)
    kept = write_restricted(tables, out, feats)
    check_data_dir(out)
    audio = sum(s["audio_seconds"] for s in stats)
    cpu = sum(s["wall_seconds"] * s["num_threads"] for s in stats)
    total = {
        "utterances": len(tables["utt2spk"]), "kept": kept, "dropped": dict(dropped), "audio_hours": audio / 3600,
        "xrt_per_core": round(audio / max(cpu, 1e-9), 1), "num_shards": num_shards,
    }
    logger.info("merged %d shards into %s: %d of %d utterances kept, %.2f h of audio, %.0fx real time per core",
                num_shards, out, kept, total["utterances"], total["audio_hours"], total["xrt_per_core"])
    for reason, n in sorted(dropped.items()):
        logger.info("dropped %d utterance(s): %s", n, reason)
    write_marker(out / MARKER, shards.signature(), totals=total)
    return total
