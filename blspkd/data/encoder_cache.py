"""Frozen-encoder output cache: the speech encoder's outputs written once (stage 2), read by training instead of
running the encoder every epoch.

With ``model.freeze_speech_encoder: true`` (the default) the Whisper encoder is a fixed function in eval mode, so its
output for an utterance is the same at every epoch. ``dump_encoder_outputs`` writes them next to the log-mel features
of a dump dir; training with ``data.encoder_cache: true`` feeds them to the adapter (``BlspKdModel.forward``'s
``encoder_out``). Decoding keeps reading the log-mel (``feats.scp``, or the audio of a ``--feats_type raw`` dump dir),
so the cache is a training-time file only.

Files (blspkd/data/feats_io.py writes the matrices):
    encoder_out.f16    float16 matrices (T' x d), T' = ceil(T / 2): 50 frames per second of speech
    encoder_out.scp    key -> location
    encoder_out.json   which encoder wrote them: its directory, a sha256 of its config and weights, pad_to_30s,
                       the width d and the utterance count (written last: its presence means the dump is complete)

Disk, d x 50 frames/s x 2 bytes: 138 MB per hour of speech for Whisper tiny.en (d = 384, the log-mel dump is 115 MB/h),
461 MB/h for large-v2 (d = 1280): 442 GB for LibriSpeech's 960 h.
"""
from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from blspkd.data.audio_dump import RawAudio, is_raw_dump
from blspkd.data.feats_io import Fp16Matrices, load_scp, write_fp16_matrices
from blspkd.data.kaldi_dir import DataDirError, read_counts
from blspkd.data.mel import WhisperLogMel

logger = logging.getLogger(__name__)

DATA, INDEX, INFO = "encoder_out.f16", "encoder_out.scp", "encoder_out.json"


def encoder_record(encoder, name: str) -> dict:
    """What identifies a speech encoder's outputs: ``name`` (its directory), a sha256 of its config and every weight,
    and ``pad_to_30s`` (which changes the outputs of the same weights). ``encoder``: a ``WhisperSpeechEncoder``."""
    digest = hashlib.sha256(encoder.encoder.config.to_json_string(use_diff=False).encode())
    for key, tensor in sorted(encoder.encoder.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        digest.update(f"{key}:{t.dtype}:{tuple(t.shape)}".encode())
        digest.update(t.view(torch.uint8).numpy().tobytes())
    return {"speech_encoder": name, "sha256": digest.hexdigest(), "pad_to_30s": bool(encoder.pad_to_30s)}


def _describe(record: dict) -> str:
    return f"{record['speech_encoder']} (sha256 {record['sha256'][:12]}, pad_to_30s {record['pad_to_30s']})"


def _batches(lengths: dict[str, int], batch_frames: int) -> Iterator[list[str]]:
    keys = sorted(lengths, key=lambda k: lengths[k])
    batch: list[str] = []
    for key in keys:
        if batch and (len(batch) + 1) * lengths[key] > batch_frames:
            yield batch
            batch = []
        batch.append(key)
    if batch:
        yield batch


@torch.no_grad()
def dump_encoder_outputs(dump_dir: str | Path, speech_encoder: str, pad_to_30s: bool = False,
                         batch_frames: int = 30000, device: str = "cpu") -> Path:
    """Write the encoder outputs of every utterance of ``dump_dir``'s feats.scp; skipped (logged) when
    ``encoder_out.json`` says the same encoder wrote all of them. Returns the info file."""
    from blspkd.models.speech_encoder import WhisperSpeechEncoder

    dump_dir = Path(dump_dir)
    encoder = WhisperSpeechEncoder(speech_encoder, freeze=True, pad_to_30s=pad_to_30s).to(device).eval()
    record = encoder_record(encoder, speech_encoder)
    lengths = read_counts(dump_dir / "utt2num_frames")
    info_path = dump_dir / INFO
    if info_path.is_file():
        info = json.loads(info_path.read_text())
        if info.get("sha256") == record["sha256"] and info.get("pad_to_30s") == record["pad_to_30s"] \
                and info.get("num_utts") == len(lengths):
            logger.info("%s: encoder outputs of %s already complete; skipping", dump_dir, _describe(record))
            return info_path
        info_path.unlink()  # outputs of another encoder (or incomplete): rewritten below
    # A --feats_type raw dump dir: the log-mel of its audio, computed batched on ``device``.
    mel = WhisperLogMel.from_pretrained(speech_encoder) if is_raw_dump(dump_dir) else None
    feats = RawAudio(dump_dir) if mel else load_scp(dump_dir / "feats.scp")
    missing = sorted(set(lengths) - set(feats))
    if missing:
        raise DataDirError(f"{dump_dir}/utt2num_frames lists {len(missing)} utterance(s) without features in "
                           f"{'wav.scp' if mel else 'feats.scp'} (first: {missing[0]}); re-run stage 2 for this dir")

    def outputs() -> Iterator[tuple[str, np.ndarray]]:
        for keys in _batches(lengths, batch_frames):
            mats = [np.array(feats[k], dtype=np.float32) for k in keys]  # writable copies for torch
            n = torch.tensor([m.shape[0] for m in mats])
            x = torch.zeros(len(mats), int(n.max()), *mats[0].shape[1:])
            for i, m in enumerate(mats):
                x[i, : m.shape[0]] = torch.from_numpy(m)
            x, n = mel.batch(x.to(device), n.to(device)) if mel else (x, n)
            hidden, mask = encoder(x.to(device), n.to(device))
            for i, key in enumerate(keys):
                yield key, hidden[i, : int(mask[i].sum())].float().cpu().numpy()

    write_fp16_matrices(dump_dir / DATA, dump_dir / INDEX, outputs())
    info = {**record, "dim": encoder.output_dim, "dtype": "float16", "num_utts": len(lengths)}
    info_path.write_text(json.dumps(info, indent=1) + "\n")
    size = (dump_dir / DATA).stat().st_size
    logger.info("%s: encoder outputs of %d utterances (%.1f MB, float16) from %s", dump_dir, len(lengths), size / 1e6,
                _describe(record))
    return info_path


def load_encoder_outputs(dump_dir: str | Path, expected: dict) -> Fp16Matrices:
    """The cached encoder outputs of ``dump_dir`` (key -> float32 (T', d)), after checking that the encoder described
    by ``expected`` (``encoder_record`` of the model's encoder) wrote them."""
    dump_dir = Path(dump_dir)
    info_path = dump_dir / INFO
    if not info_path.is_file():
        raise FileNotFoundError(
            f"{info_path} is missing: data.encoder_cache: true reads the encoder outputs that stage 2 writes with "
            f"--encoder_cache true (or: python -m blspkd.bin.dump_encoder_outputs --dump_dir {dump_dir} "
            f"--speech_encoder {expected['speech_encoder']}); or set data.encoder_cache: false"
        )
    info = json.loads(info_path.read_text())
    if info.get("sha256") != expected["sha256"] or info.get("pad_to_30s") != expected["pad_to_30s"]:
        raise DataDirError(
            f"{info_path}: the cached encoder outputs were written by {_describe(info)}, but this model's speech "
            f"encoder is {_describe(expected)}; re-run stage 2 with --encoder_cache true (--force true) for this "
            "encoder, or set data.encoder_cache: false"
        )
    return Fp16Matrices(dump_dir / INDEX)
