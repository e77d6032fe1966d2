"""Speech in, text out: run a trained or exported BLSP-KD model on audio files.

Usage:
    python -m blspkd.bin.infer --model exp/finetune/export --audio question.wav
    python -m blspkd.bin.infer --model exp/pretrain --audio a.wav b.flac c.mp3 --task continuation
    python -m blspkd.bin.infer --model DIR --audio talk.ogg --instruction "Summarise the speech in one sentence."
    python -m blspkd.bin.infer --model DIR --audio a.wav --task translation --language German --num_beams 4

--model: an exported directory (stage 8), a model directory (config.json + model.safetensors) or an experiment dir
holding model/. Audio: anything soundfile reads (WAV, FLAC, OGG, MP3 with libsndfile >= 1.1, ...) and, failing that,
anything ffmpeg reads; any sample rate (resampled to the model's 16 kHz), channels averaged to mono; at most 30 s per
file (Whisper's window). The instruction comes from --task (the training tasks' instructions; answer and plain: none,
the speech itself is the request) unless --instruction is given. One file: the text is streamed to the terminal as it
is generated. Several: one "<file><TAB><text>" line each, in the order given. Logs go to stderr (--log_level INFO to
see them). The same from Python: blspkd.SpeechLLM (blspkd/api.py); in a browser or over HTTP: blspkd.bin.serve.
"""
from __future__ import annotations

import sys

from blspkd.api import TASKS, GenerationSettings
from blspkd.bin._args import ArgumentParser, cli, opt


def build_parser() -> ArgumentParser:
    p = ArgumentParser("python -m blspkd.bin.infer", __doc__)
    p.add_argument("--model", required=True, help="exported dir, model dir, or experiment dir with model/")
    p.add_argument("--audio", required=True, nargs="+", metavar="FILE", help="audio files")
    p.add_argument("--task", choices=TASKS, default="transcription",
                   help="picks the instruction (default: %(default)s; answer and plain = the model's default "
                        "instruction: the speech is the request)")
    p.add_argument("--instruction", help="the instruction text (replaces the task's)")
    p.add_argument("--language", help="target language of --task translation, e.g. German")
    p.add_argument(*opt("max_new_tokens"), dest="max_new_tokens", type=int, default=128, help="(default: 128)")
    p.add_argument(*opt("num_beams"), dest="num_beams", type=int, default=1, help="1 = greedy (default: 1)")
    p.add_argument(*opt("length_penalty"), dest="length_penalty", type=float, default=1.0, help="beam search")
    p.add_argument(*opt("repetition_penalty"), dest="repetition_penalty", type=float, default=1.0,
                   help="> 1 discourages repeating tokens (default: 1.0)")
    p.add_argument(*opt("no_repeat_ngram_size"), dest="no_repeat_ngram_size", type=int, default=0,
                   help="forbid repeating n-grams of this size (default: 0 = off)")
    p.add_argument(*opt("batch_size"), dest="batch_size", type=int, default=8, help="files per batch (default: 8)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default: auto)")
    p.add_argument(*opt("no_stream"), dest="no_stream", action="store_true",
                   help="do not stream a single file's text: print '<file><TAB><text>' at the end")
    p.add_argument(*opt("log_level"), dest="log_level", default="WARNING", help="(default: WARNING)")
    return p


@cli
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from blspkd.utils.logging import setup_logging

    setup_logging(args.log_level)
    from blspkd.api import SpeechFrontend, SpeechLLM, task_instruction_text
    from blspkd.decode import load_model, resolve_model_dir
    from blspkd.utils.config import ConfigError

    settings = GenerationSettings(args.max_new_tokens, args.num_beams, args.length_penalty, args.repetition_penalty,
                                  args.no_repeat_ngram_size)
    model_dir = resolve_model_dir(args.model)
    instruction = task_instruction_text(args.task, args.language, args.instruction)
    settings.generate_kwargs()  # checks the values
    if args.batch_size < 1:
        raise ConfigError(f"--batch_size must be >= 1, got {args.batch_size}")
    frontend = SpeechFrontend(model_dir)
    speeches = [frontend(path) for path in args.audio]  # every file checked before the (slow) model load
    llm = SpeechLLM(load_model(model_dir, args.device), model_dir, frontend)
    # transformers streams greedy search only
    if len(speeches) == 1 and not args.no_stream and args.num_beams == 1:
        for piece in llm.stream(speeches[0], args.instruction, args.task, args.language, **vars(settings)):
            print(piece, end="", flush=True)
        print(flush=True)
        return 0
    for start in range(0, len(speeches), args.batch_size):
        chunk = speeches[start: start + args.batch_size]
        answers = llm.answer(chunk, [instruction] * len(chunk), **vars(settings))
        for path, answer in zip(args.audio[start: start + args.batch_size], answers):
            print(f"{path}\t{' '.join(answer.text.split())}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
