"""Speech in, text out: run a trained or exported BLSP-KD model on audio files.

Usage:
    python -m blspkd.bin.infer --model exp/finetune/export --audio question.wav
    python -m blspkd.bin.infer --model exp/pretrain --audio a.wav b.flac c.mp3 --task continuation
    python -m blspkd.bin.infer --model DIR --audio talk.ogg --instruction "Summarise the speech in one sentence."
    python -m blspkd.bin.infer --model DIR --audio a.wav --task translation --language German --num_beams 4

--model: an exported directory (stage 8), a model directory (config.json + model.safetensors) or an experiment dir
holding model/. Audio: anything soundfile reads (WAV, FLAC, OGG, MP3 with libsndfile >= 1.1, ...) and, failing that,
anything ffmpeg reads; any sample rate (resampled to the model's 16 kHz), channels averaged to mono; at most 30 s per
file (Whisper's window). The instruction comes from --task (the training tasks' instructions) unless --instruction
is given. One file: the text is streamed to the terminal as it is generated. Several: one "<file><TAB><text>" line
each, in the order given. Logs go to stderr (--log_level INFO to see them).
"""
from __future__ import annotations

import argparse
import logging
import shlex
import shutil
import sys
from pathlib import Path

import numpy as np

from blspkd.data.audio import AudioError, decode_audio, resample

logger = logging.getLogger("blspkd.bin.infer")
TASKS = ("transcription", "continuation", "translation", "plain")


def _opt(name: str) -> list[str]:
    return [f"--{name}", f"--{name.replace('_', '-')}"] if "_" in name else [f"--{name}"]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m blspkd.bin.infer", description=__doc__.split("\n\n")[0],
                                epilog=__doc__.split("\n\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="exported dir, model dir, or experiment dir with model/")
    p.add_argument("--audio", required=True, nargs="+", metavar="FILE", help="audio files")
    p.add_argument("--task", choices=TASKS, default="transcription",
                   help="picks the instruction (default: %(default)s; plain = the model's default instruction)")
    p.add_argument("--instruction", help="the instruction text (replaces the task's)")
    p.add_argument("--language", help="target language of --task translation, e.g. German")
    p.add_argument(*_opt("max_new_tokens"), dest="max_new_tokens", type=int, default=128, help="(default: 128)")
    p.add_argument(*_opt("num_beams"), dest="num_beams", type=int, default=1, help="1 = greedy (default: 1)")
    p.add_argument(*_opt("length_penalty"), dest="length_penalty", type=float, default=1.0, help="beam search")
    p.add_argument(*_opt("repetition_penalty"), dest="repetition_penalty", type=float, default=1.0,
                   help="> 1 discourages repeating tokens (default: 1.0)")
    p.add_argument(*_opt("no_repeat_ngram_size"), dest="no_repeat_ngram_size", type=int, default=0,
                   help="forbid repeating n-grams of this size (default: 0 = off)")
    p.add_argument(*_opt("batch_size"), dest="batch_size", type=int, default=8, help="files per batch (default: 8)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default: auto)")
    p.add_argument(*_opt("no_stream"), dest="no_stream", action="store_true",
                   help="do not stream a single file's text: print '<file><TAB><text>' at the end")
    p.add_argument(*_opt("log_level"), dest="log_level", default="WARNING", help="(default: WARNING)")
    return p


def read_audio(path: str, sample_rate: int) -> np.ndarray:
    """Mono float32 samples at ``sample_rate`` of an audio file; AudioError naming the file when it cannot be read."""
    if not Path(path).is_file():
        raise AudioError(f"cannot read audio file {path}: file not found")
    try:
        data, rate = decode_audio(path)
    except AudioError as sf_error:
        if shutil.which("ffmpeg") is None:
            raise AudioError(f"cannot read audio file {path}: {sf_error} (and ffmpeg, which reads more formats, is "
                             "not installed)") from None
        # soundfile does not know every container/codec (m4a, opus in webm, ...); ffmpeg decodes to WAV on a pipe.
        cmd = f"ffmpeg -nostdin -v error -i {shlex.quote(path)} -f wav -acodec pcm_s16le - |"
        try:
            data, rate = decode_audio(cmd)
        except AudioError as ff_error:
            raise AudioError(f"cannot read audio file {path}: neither soundfile nor ffmpeg can decode it "
                             f"({sf_error}; {ff_error})") from None
    wave = data.mean(axis=1) if data.shape[1] > 1 else data[:, 0]
    return np.ascontiguousarray(resample(wave, rate, sample_rate), dtype=np.float32)


def log_mels(paths: list[str], model_dir: Path) -> list[np.ndarray]:
    """Whisper log-mel features (T, n_mels) of every file, checked before the (slow) model load."""
    from blspkd.data.mel import WhisperLogMel

    mel = WhisperLogMel.from_pretrained(model_dir)
    max_samples = mel.chunk_length * mel.sampling_rate
    feats = []
    for path in paths:
        wave = read_audio(path, mel.sampling_rate)
        if len(wave) < mel.min_samples:
            raise AudioError(f"audio file {path} is too short: {len(wave)} samples at {mel.sampling_rate} Hz, at least "
                             f"{mel.min_samples} are needed")
        if len(wave) > max_samples:
            raise AudioError(f"audio file {path} lasts {len(wave) / mel.sampling_rate:.1f} s, longer than the "
                             f"{mel.chunk_length} s the Whisper encoder takes; split it (e.g. sox in.wav out.wav "
                             f"trim 0 {mel.chunk_length} : newfile : restart)")
        feats.append(mel(wave))
    return feats


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from blspkd.utils.logging import setup_logging

    setup_logging(args.log_level)
    import torch

    from blspkd.data.kaldi_dir import DataDirError
    from blspkd.decode import generation_kwargs, load_model, resolve_model_dir
    from blspkd.train.config import TaskConfig
    from blspkd.train.dataset import task_instruction
    from blspkd.utils.config import ConfigError

    try:
        model_dir = resolve_model_dir(args.model)
        instruction = args.instruction
        if args.task != "plain":
            instruction = task_instruction(TaskConfig(kind=args.task, instruction=args.instruction,
                                                      language=args.language))
        gen_kwargs = generation_kwargs(args)
        if args.batch_size < 1:
            raise ConfigError(f"--batch_size must be >= 1, got {args.batch_size}")
        feats = log_mels(args.audio, model_dir)
        model = load_model(model_dir, args.device)
    except (AudioError, ConfigError, DataDirError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    device = next(model.parameters()).device
    # transformers streams greedy search only
    stream = len(args.audio) == 1 and not args.no_stream and args.num_beams == 1
    if stream:
        from transformers import TextStreamer

        gen_kwargs["streamer"] = TextStreamer(model.tokenizer, skip_prompt=True, skip_special_tokens=True)
    for start in range(0, len(feats), args.batch_size):
        chunk = [torch.from_numpy(f) for f in feats[start: start + args.batch_size]]
        lengths = torch.tensor([f.shape[0] for f in chunk], device=device)
        padded = torch.nn.utils.rnn.pad_sequence(chunk, batch_first=True).to(device)
        texts = model.generate(padded, lengths, [instruction] * len(chunk), **gen_kwargs)
        if stream:
            sys.stdout.flush()  # the streamer printed the text and its final newline
        else:
            for path, text in zip(args.audio[start: start + args.batch_size], texts):
                print(f"{path}\t{' '.join(text.split())}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
