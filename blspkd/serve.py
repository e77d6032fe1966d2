"""The web server of ``python -m blspkd.bin.serve``: a page to talk to the model and an OpenAI-compatible endpoint.

Routes (FastAPI on uvicorn):

    GET  /                      the page (blspkd/web/: HTML, JS and CSS served from here, nothing from elsewhere)
    GET  /api/config            what the page needs: tasks and their instructions, limits, whether a key is required
    GET  /v1/models             the one model served
    POST /v1/chat/completions   OpenAI chat completions with audio content parts, optionally streamed (SSE)

A request holds one user message whose content parts are one ``{"type": "input_audio", "input_audio": {"data":
<base64>, "format": "wav"}}`` (any of ``AUDIO_FORMATS``: the bytes are decoded by content, with ffmpeg for what
soundfile cannot read, so the WebM/Ogg the browser records works) and any ``{"type": "text", "text": ...}`` parts,
joined as the instruction (none: the model's default instruction). Decoding is greedy unless ``temperature`` > 0, so
an answer is exactly what ``python -m blspkd.bin.infer`` prints for the same audio and instruction.

Errors are HTTP 4xx with OpenAI's error object ``{"error": {"message", "type", "param", "code"}}``; the message says
what to fix. One worker thread owns the model: requests wait in a bounded queue (503 when it is full); waiting
non-streamed requests with the same settings run as one batch (up to ``max_batch_size``), a streamed one runs alone
(transformers streams one sequence) and stops when its client goes away.
"""

import asyncio
import base64
import binascii
import collections
import contextlib
import hmac
import json
import logging
import threading
import time
import uuid
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path

from blspkd.api import Answer, AnswerStream, GenerationSettings, Speech, SpeechLLM, task_instruction_text
from blspkd.data.audio import AudioError
from blspkd.utils.config import ConfigError

logger = logging.getLogger(__name__)

WEB_DIR = Path(__file__).parent / "web"
AUDIO_FORMATS = ("wav", "mp3", "flac", "ogg", "webm", "opus", "m4a", "mp4", "aac")
# Requests larger than this are refused before they are read: 30 s of 48 kHz stereo 16-bit WAV is 5.8 MB, 7.7 MB
# in base64.
MAX_BODY_BYTES = 16 * 1024 * 1024
PAGE_TASKS = {  # the page's task menu: label -> (task, needs a language)
    "transcribe": ("transcription", False),
    "translate": ("translation", True),
    "continue": ("continuation", False),
    "answer": ("answer", False),
}


class ApiError(Exception):
    """A request the client can fix (or a busy server): HTTP ``status`` with OpenAI's error object."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 kind: str = "invalid_request_error"):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.kind = status, message, param, code, kind

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}


# ---- the request --------------------------------------------------------------------------------------------------
@dataclass
class ChatRequest:
    audio: bytes
    audio_name: str  # how errors name it: "messages[0].content[1].input_audio (wav)"
    instruction: str | None
    settings: GenerationSettings
    stream: bool = False
    include_usage: bool = False


def _number(body: dict, name: str, kind: type, default, low, high, why: str = ""):
    value = body.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float) if kind is float else int) or \
            not low <= value <= high:
        what = "an integer" if kind is int else "a number"
        raise ApiError(400, f"'{name}' must be {what} from {low} to {high}{why}, got {value!r}", name,
                       "invalid_value")
    return kind(value)


def parse_chat_request(raw: bytes, model_id: str, max_new_tokens: int) -> ChatRequest:
    """Check a chat completion request body; ApiError says what is wrong and how to fix it."""
    try:
        body = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ApiError(400, f"the request body is not valid JSON ({e}); send a JSON object with 'model' and "
                            "'messages'", None, "invalid_json") from None
    if not isinstance(body, dict):
        raise ApiError(400, "the request body must be a JSON object with 'model' and 'messages'", None, "invalid_json")
    if not isinstance(body.get("model"), str):
        raise ApiError(400, f"'model' is missing: set it to '{model_id}' (GET /v1/models)", "model", "missing_field")
    if body["model"] != model_id:
        raise ApiError(404, f"The model '{body['model']}' does not exist: this server serves '{model_id}' "
                            "(GET /v1/models)", "model", "model_not_found")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise ApiError(400, "'messages' is missing or empty: send one user message whose content holds an "
                            "input_audio part (and optionally text parts with the instruction)", "messages",
                       "missing_field")
    if len(messages) != 1 or not isinstance(messages[0], dict) or messages[0].get("role") != "user":
        roles = [m.get("role") if isinstance(m, dict) else type(m).__name__ for m in messages]
        raise ApiError(400, f"'messages' must be exactly one user message (got roles {roles}): the model answers "
                            "one spoken turn and its system prompt is fixed by training", "messages",
                       "unsupported_messages")
    content = messages[0].get("content")
    if isinstance(content, str):
        content = [{"type": "text", "text": content}]
    if not isinstance(content, list):
        raise ApiError(400, "messages[0].content must be a list of content parts", "messages[0].content",
                       "invalid_value")
    texts, audios = [], []
    for j, part in enumerate(content):
        where = f"messages[0].content[{j}]"
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text" and isinstance(part.get("text"), str):
            texts.append(part["text"])
        elif kind == "input_audio":
            audios.append((where, part.get("input_audio")))
        else:
            raise ApiError(400, f"{where}: content part type {kind!r} is not supported; use "
                                '{"type": "text", "text": ...} and {"type": "input_audio", "input_audio": '
                                '{"data": <base64>, "format": "wav"}}', where, "invalid_content_part")
    if len(audios) != 1:
        raise ApiError(400, f"messages[0].content has {len(audios)} input_audio parts; send exactly one "
                            '({"type": "input_audio", "input_audio": {"data": <base64 of the file>, "format": '
                            '"wav"}})', "messages[0].content", "missing_audio" if not audios else "too_many_audio")
    where, audio = audios[0]
    if not isinstance(audio, dict) or not isinstance(audio.get("data"), str):
        raise ApiError(400, f"{where}.input_audio.data is missing: put the base64 of the audio file there",
                       f"{where}.input_audio.data", "missing_field")
    fmt = audio.get("format")
    if fmt not in AUDIO_FORMATS:
        raise ApiError(400, f"{where}.input_audio.format is {fmt!r}; use one of {', '.join(AUDIO_FORMATS)}",
                       f"{where}.input_audio.format", "invalid_value")
    try:
        data = base64.b64decode(audio["data"], validate=True)
    except (binascii.Error, ValueError):
        raise ApiError(400, f"{where}.input_audio.data is not valid base64; encode the file's bytes with base64 "
                            "(no data: URL prefix)", f"{where}.input_audio.data", "invalid_base64") from None
    _number(body, "n", int, 1, 1, 1, " (one answer per request)")
    name = "max_completion_tokens" if body.get("max_completion_tokens") is not None else "max_tokens"
    settings = GenerationSettings(
        max_new_tokens=_number(body, name, int, max_new_tokens, 1, max_new_tokens, " (the server's --max_new_tokens)"),
        temperature=_number(body, "temperature", float, 0.0, 0.0, 2.0),
        top_p=_number(body, "top_p", float, 1.0, 1e-6, 1.0))
    stream = body.get("stream", False)
    options = body.get("stream_options") or {}
    if not isinstance(stream, bool) or not isinstance(options, dict):
        raise ApiError(400, "'stream' must be true or false and 'stream_options' an object", "stream",
                       "invalid_value")
    # as given: the training instructions end with a space or not, and the prompt's tokens depend on it
    instruction = "\n".join(t for t in texts if t.strip()) or None
    return ChatRequest(data, f"the audio of {where}.input_audio ({fmt}, {len(data)} bytes)", instruction, settings,
                       stream, bool(options.get("include_usage")))


# ---- the worker ---------------------------------------------------------------------------------------------------
@dataclass(eq=False)  # jobs are compared by identity (the queue removes the ones it batches)
class Job:
    speech: Speech
    instruction: str | None
    kwargs: dict
    stream: bool
    result: Future = field(default_factory=Future)  # non-streamed: the Answer
    on_piece: object = None  # streamed: called (from the worker thread) with each piece, then the Answer or an error
    cancelled: threading.Event = field(default_factory=threading.Event)


class Worker:
    """One thread runs the model; ``submit`` queues a job (ApiError 503 when ``max_queue`` jobs wait)."""

    def __init__(self, llm: SpeechLLM, max_batch_size: int = 8, max_queue: int = 64):
        self.llm, self.max_batch_size, self.max_queue = llm, max_batch_size, max_queue
        self.jobs: collections.deque[Job] = collections.deque()
        self.ready = threading.Condition()
        self.stopping = False
        self.thread = threading.Thread(target=self._run, name="blspkd-worker", daemon=True)
        self.thread.start()

    def submit(self, job: Job) -> None:
        if not self.thread.is_alive():
            raise ApiError(500, "the model's worker thread has stopped (the server log says why); restart the "
                                "server", None, "worker_stopped", "server_error")
        with self.ready:
            if len(self.jobs) >= self.max_queue:
                raise ApiError(503, f"the server is busy: {len(self.jobs)} requests are waiting; retry later",
                               None, "server_busy", "server_error")
            self.jobs.append(job)
            self.ready.notify()

    def stop(self) -> None:
        with self.ready:
            self.stopping = True
            self.ready.notify()
        self.thread.join(timeout=60)

    def _next_batch(self) -> list[Job] | None:
        with self.ready:
            while not self.jobs and not self.stopping:
                self.ready.wait()
            if self.stopping:
                return None
            first = self.jobs.popleft()
            batch = [first]
            if not first.stream:
                for job in list(self.jobs):
                    if len(batch) == self.max_batch_size:
                        break
                    if not job.stream and job.kwargs == first.kwargs:
                        self.jobs.remove(job)
                        batch.append(job)
            return batch

    def _run(self) -> None:
        while (batch := self._next_batch()) is not None:
            batch = [job for job in batch if not job.cancelled.is_set()]
            if not batch:
                continue
            try:
                if batch[0].stream:
                    self._stream(batch[0])
                else:
                    answers = self.llm.run_batch([j.speech for j in batch], [j.instruction for j in batch],
                                                 batch[0].kwargs)
                    for job, answer in zip(batch, answers):
                        job.result.set_result(answer)
            except Exception as e:  # one failed batch must not take the server down
                logger.exception("generation failed")
                for job in batch:
                    if job.stream:
                        job.on_piece(e)
                    elif not job.result.done():
                        job.result.set_exception(e)

    def _stream(self, job: Job) -> None:
        stream = AnswerStream(self.llm, job.speech, job.instruction, job.kwargs)
        for piece in stream:
            if job.cancelled.is_set():
                stream.close()
                return
            job.on_piece(piece)
        job.on_piece(stream.answer)


# ---- the app ------------------------------------------------------------------------------------------------------
def create_app(llm: SpeechLLM, model_id: str, api_key: str | None = None, max_new_tokens: int = 128,
               language: str = "German", max_batch_size: int = 8, max_queue: int = 64):
    """The FastAPI application serving ``llm`` as ``model_id`` (the worker thread starts with the app)."""
    from fastapi import FastAPI, Request
    from fastapi.responses import FileResponse, JSONResponse, StreamingResponse
    from fastapi.staticfiles import StaticFiles
    from starlette.concurrency import run_in_threadpool
    from starlette.exceptions import HTTPException

    state: dict = {}
    started = time.time()

    @contextlib.asynccontextmanager
    async def lifespan(app):
        state["worker"] = Worker(llm, max_batch_size, max_queue)
        yield
        state["worker"].stop()

    app = FastAPI(title="blspkd", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.mount("/static", StaticFiles(directory=WEB_DIR), name="static")

    @app.exception_handler(ApiError)
    async def api_error(request, e: ApiError):
        return JSONResponse(e.body(), status_code=e.status)

    @app.exception_handler(HTTPException)
    async def http_error(request, e: HTTPException):
        hint = {404: f"no route {request.method} {request.url.path}; the routes are GET /, GET /v1/models and "
                     "POST /v1/chat/completions",
                405: f"{request.method} is not allowed on {request.url.path}"}.get(e.status_code, str(e.detail))
        return JSONResponse(ApiError(e.status_code, hint, None, None).body(), status_code=e.status_code,
                            headers=getattr(e, "headers", None))

    def check_key(request: Request) -> None:
        if api_key is None:
            return
        given = request.headers.get("authorization", "")
        if not (given.startswith("Bearer ") and hmac.compare_digest(given[7:].encode(), api_key.encode())):
            raise ApiError(401, "Incorrect or missing API key: send the server's --api_key as a bearer token "
                                "(Authorization: Bearer KEY)", None, "invalid_api_key")

    @app.get("/", include_in_schema=False)
    async def page():
        return FileResponse(WEB_DIR / "index.html", headers={"Cache-Control": "no-cache"})

    @app.get("/api/config")
    async def config():
        tasks = [{"name": name, "needs_language": lang,
                  "instruction": task_instruction_text(task, "{language}" if lang else None)}
                 for name, (task, lang) in PAGE_TASKS.items()]
        return {"tasks": tasks, "language": language, "max_audio_seconds": llm.frontend.max_seconds,
                "max_new_tokens": max_new_tokens, "auth_required": api_key is not None}

    @app.get("/v1/models")
    async def models(request: Request):
        check_key(request)
        return {"object": "list", "data": [{"id": model_id, "object": "model", "created": int(started),
                                            "owned_by": "blspkd"}]}

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        check_key(request)
        req = parse_chat_request(await _read_body(request, llm.frontend.max_seconds), model_id, max_new_tokens)
        try:
            speech = await run_in_threadpool(llm.frontend, req.audio, req.audio_name)
            kwargs = req.settings.generate_kwargs()
        except (AudioError, ConfigError) as e:
            raise ApiError(400, str(e), "messages[0].content", "invalid_audio" if isinstance(e, AudioError)
                           else "invalid_value") from None
        job = Job(speech, req.instruction, kwargs, req.stream)
        reply = {"id": f"chatcmpl-{uuid.uuid4().hex}", "created": int(time.time()), "model": model_id}
        if not req.stream:
            state["worker"].submit(job)
            try:
                answer = await asyncio.wrap_future(job.result)
            except asyncio.CancelledError:
                job.cancelled.set()
                raise
            except Exception as e:
                raise ApiError(500, f"generation failed: {e}", None, "generation_failed", "server_error") from None
            return {**reply, "object": "chat.completion",
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": answer.text},
                                 "finish_reason": answer.finish_reason}],
                    "usage": _usage(answer), "blspkd": _stats(answer)}
        loop = asyncio.get_running_loop()
        pieces: asyncio.Queue = asyncio.Queue()

        def on_piece(item) -> None:
            with contextlib.suppress(RuntimeError):  # the event loop is closed: the server is shutting down
                loop.call_soon_threadsafe(pieces.put_nowait, item)

        job.on_piece = on_piece
        state["worker"].submit(job)
        return StreamingResponse(_events(reply, pieces, job, req.include_usage), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    return app


async def _read_body(request, max_seconds: int) -> bytes:
    """The request body, refused with 413 as soon as it is known to exceed MAX_BODY_BYTES (declared or sent)."""
    def too_large(size: int) -> ApiError:
        return ApiError(413, f"the request has {size} bytes or more, more than the {MAX_BODY_BYTES} this server "
                             f"takes; send at most {max_seconds} s of audio", None, "request_too_large")

    length = request.headers.get("content-length", "")
    if length.isdigit() and int(length) > MAX_BODY_BYTES:
        raise too_large(int(length))
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_BODY_BYTES:
            raise too_large(len(body))
    return bytes(body)


def _usage(answer: Answer) -> dict:
    return {"prompt_tokens": answer.prompt_tokens, "completion_tokens": answer.completion_tokens,
            "total_tokens": answer.prompt_tokens + answer.completion_tokens}


def _stats(answer: Answer) -> dict:
    """What the page shows, beyond OpenAI's fields."""
    return {"audio_seconds": round(answer.audio_seconds, 3), "num_speech_tokens": answer.num_speech_tokens,
            "seconds": round(answer.seconds, 3), "real_time_factor": round(answer.real_time_factor, 4),
            "batch_size": answer.batch_size}


def _sse(obj: dict) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"


async def _events(reply: dict, pieces: asyncio.Queue, job: Job, include_usage: bool):
    """The server-sent events of a streamed answer, OpenAI's chunk format, ending with ``data: [DONE]``."""
    chunk = {**reply, "object": "chat.completion.chunk"}

    def delta(content: dict, finish_reason=None, **extra) -> str:
        return _sse({**chunk, "choices": [{"index": 0, "delta": content, "finish_reason": finish_reason}], **extra})

    try:
        yield delta({"role": "assistant", "content": ""})
        while True:
            item = await pieces.get()
            if isinstance(item, str):
                yield delta({"content": item})
            elif isinstance(item, Answer):
                yield delta({}, item.finish_reason, blspkd=_stats(item))
                if include_usage:
                    yield _sse({**chunk, "choices": [], "usage": _usage(item)})
                break
            else:
                yield _sse(ApiError(500, f"generation failed: {item}", None, "generation_failed",
                                    "server_error").body())
                break
        yield "data: [DONE]\n\n"
    finally:  # also when the client went away: stop generating for it
        job.cancelled.set()
