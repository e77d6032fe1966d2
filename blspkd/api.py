"""The Python API: load a trained or exported BLSP-KD model and ask it about speech.

    from blspkd import SpeechLLM
    m = SpeechLLM.from_pretrained("exp/finetune/export")
    m.generate("a.wav", instruction="Summarise the speech in one sentence.")

    for piece in m.stream("a.wav", task="translation", language="German"):   # the text as it is generated
        print(piece, end="", flush=True)

``from_pretrained`` takes what ``python -m blspkd.bin.infer --model`` takes: an exported directory (stage 8), a model
directory (config.json + model.safetensors) or an experiment directory holding ``model/``. Audio is a file path (any
format soundfile or ffmpeg reads), the bytes of an encoded file (WAV, MP3, FLAC, OGG, WebM, ...) or a 16 kHz mono
float waveform; at most 30 s (the Whisper encoder's window). The prompt is ``[prefix | instruction | N_hat speech
tokens | suffix]`` where CIF predicts N_hat from the audio (doc/method.md 3.2); ``Answer`` reports N_hat, the token
counts and the real-time factor. Decoding is greedy unless ``num_beams`` > 1 (or sampling with ``temperature`` > 0).
"""
from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from blspkd.data.audio import AudioError, read_audio, read_audio_bytes
from blspkd.utils.config import ConfigError

logger = logging.getLogger(__name__)

# The tasks a user can pick (the command line, the web page), named for users; each is a task of the registry
# (blspkd/tasks.py). ``answer`` is its spoken_instruction: the speech is the question or request itself, so the prompt
# has no text instruction (the model's default_instruction).
TASKS = ("transcription", "translation", "continuation", "answer", "plain")
_REGISTRY_NAME = {"answer": "spoken_instruction"}


def task_instruction_text(task: str, language: str | None = None, instruction: str | None = None) -> str | None:
    """The instruction of ``task``: the training tasks' instructions, or ``instruction`` in their place (its
    ``{language}`` filled in); None = the model's default instruction."""
    from blspkd.tasks import fixed_instruction

    if task not in TASKS:
        raise ConfigError(f"unknown task {task!r}; choose one of {', '.join(TASKS)}")
    return fixed_instruction(_REGISTRY_NAME.get(task, task), instruction, language=language)


@dataclass
class GenerationSettings:
    """How the answer is generated (the defaults are ``blspkd.bin.infer``'s)."""

    max_new_tokens: int = 128
    num_beams: int = 1  # 1 = greedy
    length_penalty: float = 1.0  # beam search only
    repetition_penalty: float = 1.0
    no_repeat_ngram_size: int = 0
    temperature: float = 0.0  # > 0: sample with this temperature (and top_p) instead of taking the best token
    top_p: float = 1.0

    def generate_kwargs(self) -> dict:
        """transformers ``generate`` arguments; ConfigError for values out of range."""
        from blspkd.decode import generation_kwargs

        kwargs = generation_kwargs(self)
        if self.temperature < 0 or not 0 < self.top_p <= 1:
            raise ConfigError(f"temperature must be >= 0 and top_p in (0, 1] (got {self.temperature}, {self.top_p})")
        if self.temperature > 0:
            kwargs.update(do_sample=True, temperature=self.temperature, top_p=self.top_p)
        return kwargs


@dataclass
class Speech:
    """One utterance ready for the model: its Whisper log-mel features and duration."""

    name: str
    feats: np.ndarray  # (frames, n_mels) float32
    seconds: float


@dataclass
class Answer:
    text: str
    num_speech_tokens: int  # N_hat, the speech tokens CIF produced
    prompt_tokens: int  # the whole prompt: framing + instruction + speech tokens
    completion_tokens: int  # generated tokens up to and including the end-of-turn token
    finish_reason: str  # "stop" (end of turn) or "length" (max_new_tokens reached)
    audio_seconds: float
    seconds: float  # generation time (encoder, adapter and LLM) of the batch it was answered in
    batch_size: int  # utterances generated together with this one (itself included)

    @property
    def real_time_factor(self) -> float:
        return self.seconds / max(self.audio_seconds, 1e-9)


class SpeechFrontend:
    """Audio (a path, encoded bytes or a 16 kHz waveform) -> checked ``Speech``: mono, 16 kHz, between one frame and
    the encoder's window long. Needs only the model directory's preprocessor_config.json (cheap, so a command can check
    its inputs before loading the model)."""

    def __init__(self, model_dir: str | Path):
        from blspkd.data.mel import WhisperLogMel

        self.mel = WhisperLogMel.from_pretrained(model_dir)
        self.sample_rate = self.mel.sampling_rate
        self.max_seconds = self.mel.chunk_length

    def __call__(self, audio: str | Path | bytes | np.ndarray, name: str | None = None) -> Speech:
        if isinstance(audio, Speech):
            return audio
        cut = None  # decoding stopped here (bytes: an upload is not decoded beyond the window and a second)
        if isinstance(audio, (str, Path)):
            name = name or f"audio file {audio}"
            wave = read_audio(audio, self.sample_rate)
        elif isinstance(audio, (bytes, bytearray, memoryview)):
            name = name or "the audio"
            cut = self.max_seconds + 1
            wave = read_audio_bytes(bytes(audio), self.sample_rate, name, max_seconds=cut)
        else:
            name = name or "the waveform"
            wave = np.asarray(audio, dtype=np.float32)
            if wave.ndim != 1:
                raise AudioError(f"{name}: expected a mono waveform at {self.sample_rate} Hz (1-D), got shape "
                                 f"{wave.shape}")
        if len(wave) < self.mel.min_samples:
            raise AudioError(f"{name} is too short: {len(wave)} samples at {self.sample_rate} Hz, at least "
                             f"{self.mel.min_samples} are needed")
        if len(wave) > self.max_seconds * self.sample_rate:
            seconds = len(wave) / self.sample_rate
            length = f"{cut} s or more" if cut and seconds >= cut - 1e-3 else f"{seconds:.1f} s"
            raise AudioError(f"{name} lasts {length}, longer than the {self.max_seconds} s "
                             f"the Whisper encoder takes; split it (e.g. sox in.wav out.wav trim 0 {self.max_seconds} "
                             ": newfile : restart)")
        return Speech(name, self.mel(wave), len(wave) / self.sample_rate)


class _TextPieces:
    """A transformers streamer: the generated text in pieces whose concatenation is exactly the final, stripped text.

    Each step decodes all tokens so far and hands on the new part, holding back trailing whitespace (the final text is
    stripped) and an incomplete UTF-8 character (decoded as U+FFFD until its last byte comes)."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.tokens: list[int] = []
        self.sent = ""
        self.prompt_seen = False
        self.pieces: queue.Queue = queue.Queue()

    def put(self, value) -> None:
        if not self.prompt_seen:  # generate() hands over the prompt first
            self.prompt_seen = True
            return
        self.tokens.extend(value.reshape(-1).tolist())
        self._send(final=False)

    def end(self) -> None:
        self._send(final=True)
        self.pieces.put(None)

    def _send(self, final: bool) -> None:
        text = self.tokenizer.decode(self.tokens, skip_special_tokens=True).strip()
        if not final:
            text = text.rstrip("\ufffd").rstrip()
        if not text.startswith(self.sent):  # never seen with byte-level BPE; would make the pieces differ
            logger.warning("streamed text %r is not a prefix of the decoded text %r", self.sent, text)
        elif len(text) > len(self.sent):
            self.pieces.put(text[len(self.sent):])
            self.sent = text


class AnswerStream:
    """Iterate over the text pieces of one answer as they are generated; ``answer`` is set when the iteration ends.
    ``close()`` (or leaving a ``with`` block) stops the generation early."""

    def __init__(self, llm: SpeechLLM, speech: Speech, instruction: str | None, kwargs: dict):
        import torch
        from transformers import StoppingCriteria, StoppingCriteriaList

        self.answer: Answer | None = None
        self._cancelled = threading.Event()
        self._streamer = _TextPieces(llm.model.tokenizer)
        self._error: BaseException | None = None
        cancelled = self._cancelled

        class _Cancelled(StoppingCriteria):
            def __call__(self, input_ids, scores, **kw):
                return torch.full((input_ids.shape[0],), cancelled.is_set(), dtype=torch.bool, device=input_ids.device)

        kwargs = {**kwargs, "streamer": self._streamer, "stopping_criteria": StoppingCriteriaList([_Cancelled()])}

        def run():
            try:
                self.answer = llm.run_batch([speech], [instruction], kwargs)[0]
            except BaseException as e:  # handed to the consumer, which re-raises it
                self._error = e
                self._streamer.pieces.put(None)

        self._thread = threading.Thread(target=run, name="blspkd-generate", daemon=True)
        self._thread.start()

    def __iter__(self) -> Iterator[str]:
        while (piece := self._streamer.pieces.get()) is not None:
            yield piece
        self._thread.join()
        if self._error is not None:
            raise self._error

    def close(self) -> None:
        self._cancelled.set()
        self._thread.join()

    def __enter__(self) -> AnswerStream:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class SpeechLLM:
    """A BLSP-KD model with its audio front end: ``generate`` (text), ``stream`` (text pieces), ``answer`` (a batch,
    with the counts and timing)."""

    def __init__(self, model, model_dir: str | Path, frontend: SpeechFrontend | None = None):
        self.model = model
        self.model_dir = Path(model_dir)
        self.frontend = frontend or SpeechFrontend(model_dir)
        self.device = next(model.parameters()).device

    @classmethod
    def from_pretrained(cls, path: str | Path, device: str = "auto") -> SpeechLLM:
        """An export, a model dir or an experiment dir with ``model/``; ``device``: auto, cpu, cuda or cuda:N."""
        from blspkd.decode import load_model, resolve_model_dir

        model_dir = resolve_model_dir(path)
        frontend = SpeechFrontend(model_dir)  # reads preprocessor_config.json: fails fast before the model load
        return cls(load_model(model_dir, device), model_dir, frontend)

    @staticmethod
    def instruction(instruction: str | None = None, task: str | None = None, language: str | None = None):
        """``instruction`` if given (``{language}`` filled in), else the instruction of ``task`` (default
        transcription)."""
        return task_instruction_text(task or "transcription", language, instruction)

    def generate(self, audio, instruction: str | None = None, task: str | None = None, language: str | None = None,
                 **settings) -> str:
        """The answer's text. ``instruction`` wins over ``task`` (transcription by default); ``settings``: the
        fields of ``GenerationSettings`` (max_new_tokens, num_beams, ...)."""
        return self.answer([audio], [self.instruction(instruction, task, language)], **settings)[0].text

    def stream(self, audio, instruction: str | None = None, task: str | None = None, language: str | None = None,
               **settings) -> AnswerStream:
        """Like ``generate``, but the text comes in pieces as it is generated (greedy or sampling, not beam
        search); the pieces join to exactly ``generate``'s text."""
        gen = GenerationSettings(**settings)
        if gen.num_beams != 1:
            raise ConfigError("stream: transformers streams greedy search and sampling only; use num_beams=1 "
                             "(or generate() for beam search)")
        return AnswerStream(self, self.frontend(audio), self.instruction(instruction, task, language),
                            gen.generate_kwargs())

    def answer(self, audios: Sequence, instructions: Sequence[str | None], **settings) -> list[Answer]:
        """One batch: an ``Answer`` (text, counts, timing) per audio, each with its own instruction (None = the
        model's default instruction)."""
        if len(audios) != len(instructions):
            raise ValueError(f"answer: {len(audios)} audios but {len(instructions)} instructions")
        return self.run_batch([self.frontend(a) for a in audios], list(instructions),
                              GenerationSettings(**settings).generate_kwargs())

    def run_batch(self, speeches: list[Speech], instructions: list[str | None], kwargs: dict) -> list[Answer]:
        """``answer`` of checked speech and ready transformers ``generate`` arguments (what the server's worker
        runs)."""
        import torch

        feats = [torch.from_numpy(s.feats) for s in speeches]
        lengths = torch.tensor([f.shape[0] for f in feats], device=self.device)
        padded = torch.nn.utils.rnn.pad_sequence(feats, batch_first=True).to(self.device)
        t0 = time.perf_counter()
        out = self.model.generate(padded, lengths, instructions, return_details=True, **kwargs)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        seconds = time.perf_counter() - t0
        framing = self.model.framing
        answers = []
        for i, speech in enumerate(speeches):
            prefix = framing.prefix_ids(instructions[i] or self.model.config.default_instruction)
            n_speech, n_new = out["num_speech_tokens"][i], out["num_generated_tokens"][i]
            answers.append(Answer(
                text=out["texts"][i], num_speech_tokens=n_speech,
                prompt_tokens=len(prefix) + n_speech + len(framing.suffix_ids), completion_tokens=n_new,
                finish_reason="length" if n_new >= kwargs["max_new_tokens"] else "stop",
                audio_seconds=speech.seconds, seconds=seconds, batch_size=len(speeches)))
        return answers
