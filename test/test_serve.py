"""``python -m blspkd.bin.serve`` on the tiny random model: the official openai client, error cases, 20 concurrent
requests, the bearer key, and the page in headless Chromium. One server per module, on 127.0.0.1 only; every wait is
bounded."""
from __future__ import annotations

import base64
import concurrent.futures
import contextlib
import io
import json
import re
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
import soundfile as sf
from fixtures.audio import synth_speech

from blspkd.bin import infer
from blspkd.headless_page import wait_done

httpx = pytest.importorskip("httpx")
openai = pytest.importorskip("openai")
pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

MAX_TOKENS = 16
TRANSCRIBE = "Repeat the following sentence exactly."
MODEL_ID = "tiny-blspkd"


@pytest.fixture(scope="module")
def wavs(tmp_path_factory):
    d = tmp_path_factory.mktemp("serve")
    return [synth_speech(d / "fox.wav", "the quick brown fox jumps over the lazy dog", rate=22050),
            synth_speech(d / "bird.wav", "the early bird catches the worm", voice="en-gb+f3")]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tiny_model_dir, tmp_path_factory):
    """The served tiny model: base URL. The log is printed when a test fails to start it."""
    port = _free_port()
    log = tmp_path_factory.mktemp("serve_log") / "server.log"
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "blspkd.bin.serve", "--model", str(tiny_model_dir),
                                 "--port", str(port), "--served_model_name", MODEL_ID, "--device", "cpu",
                                 "--max_new_tokens", str(MAX_TOKENS), "--max_batch_size", "4"],
                                stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        if proc.poll() is not None:
            pytest.fail(f"the server exited with {proc.returncode}:\n{log.read_text()}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{url}/v1/models", timeout=2).status_code == 200:
                break
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"the server did not answer within 120 s:\n{log.read_text()}")
        time.sleep(0.3)
    yield {"url": url, "proc": proc, "log": log}
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)


def _cli(model_dir, path, *extra) -> str:
    """What ``python -m blspkd.bin.infer`` prints for one file (its main() in-process: a second interpreter and model
    load would double this module's time; test_recipe_e2e runs the command itself)."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert infer.main(["--model", str(model_dir), "--audio", str(path), "--max_new_tokens", str(MAX_TOKENS),
                           *extra]) == 0
    return out.getvalue()


@pytest.fixture(scope="module")
def expected(tiny_model_dir, wavs):
    """What the CLI prints for each wav, less its final newline."""
    outs = {path: _cli(tiny_model_dir, path) for path in wavs}
    for printed in outs.values():
        assert printed.endswith("\n") and printed.strip()
    return {path: printed[:-1] for path, printed in outs.items()}


def _client(server, **kw):
    return openai.OpenAI(base_url=f"{server['url']}/v1", api_key="unused", timeout=120, max_retries=0, **kw)


def _audio_message(path, instruction=TRANSCRIBE, fmt="wav") -> list[dict]:
    content = [{"type": "text", "text": instruction}] if instruction else []
    content.append({"type": "input_audio",
                    "input_audio": {"data": base64.b64encode(path.read_bytes()).decode(), "format": fmt}})
    return [{"role": "user", "content": content}]


def _ask(client, path, stream: bool, fmt="wav"):
    messages = _audio_message(path, fmt=fmt)
    if not stream:
        return client.chat.completions.create(model=MODEL_ID, messages=messages)
    chunks = list(client.chat.completions.create(model=MODEL_ID, messages=messages, stream=True,
                                                 stream_options={"include_usage": True}))
    return chunks


def _joined(chunks) -> str:
    return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)


def test_models_lists_the_model(server):
    models = _client(server).models.list()
    assert [m.id for m in models.data] == [MODEL_ID]


def test_openai_client_gets_the_cli_text(server, wavs, expected):
    client = _client(server)
    reply = _ask(client, wavs[0], stream=False)
    assert reply.choices[0].message.content == expected[wavs[0]]
    assert reply.choices[0].message.role == "assistant"
    usage, stats = reply.usage, reply.model_extra["blspkd"]
    assert 1 <= usage.completion_tokens <= MAX_TOKENS
    assert reply.choices[0].finish_reason == ("length" if usage.completion_tokens == MAX_TOKENS else "stop")
    assert usage.prompt_tokens > stats["num_speech_tokens"] >= 1
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    assert stats["audio_seconds"] == pytest.approx(sf.info(wavs[0]).duration, abs=1e-3)
    assert stats["real_time_factor"] == pytest.approx(stats["seconds"] / stats["audio_seconds"], rel=0.01, abs=1e-3)

    chunks = _ask(client, wavs[0], stream=True)
    assert _joined(chunks) == expected[wavs[0]]
    content_chunks = [c for c in chunks if c.choices and c.choices[0].delta.content]
    assert len(content_chunks) > 1, "the answer came in one piece, not token by token"
    assert chunks[0].choices[0].delta.role == "assistant"
    finals = [c for c in chunks if c.choices and c.choices[0].finish_reason]
    assert len(finals) == 1 and finals[0].model_extra["blspkd"] == {**stats, "seconds": pytest.approx(
        stats["seconds"], abs=10), "real_time_factor": pytest.approx(stats["real_time_factor"], abs=10)}
    assert chunks[-1].choices == [] and chunks[-1].usage.model_dump() == usage.model_dump()


def test_other_formats_are_decoded_like_the_cli(server, wavs, tiny_model_dir, tmp_path):
    """MP3 (soundfile) and WebM/Opus, what browsers record (ffmpeg), as the CLI reads the same files."""
    client = _client(server)
    made = []
    for fmt, codec in (("mp3", "libmp3lame"), ("webm", "libopus")):
        path = tmp_path / f"fox.{fmt}"
        p = subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-i", str(wavs[0]), "-c:a", codec, str(path)],
                           capture_output=True)
        if p.returncode != 0:
            continue
        made.append(fmt)
        want = _cli(tiny_model_dir, path)[:-1]
        assert _ask(client, path, stream=False, fmt=fmt).choices[0].message.content == want
    assert "webm" in made, "ffmpeg could not write WebM/Opus"


def test_task_instruction_as_the_cli_uses_it(server, wavs, tiny_model_dir):
    instruction = "Continue the following text in a coherent style: "  # --task continuation's, trailing space included
    want = _cli(tiny_model_dir, wavs[1], "--task", "continuation")[:-1]
    reply = _client(server).chat.completions.create(model=MODEL_ID, messages=_audio_message(wavs[1], instruction))
    assert reply.choices[0].message.content == want
    # no text part: the model's default instruction, as --task answer (and plain)
    want = _cli(tiny_model_dir, wavs[1], "--task", "answer")[:-1]
    bare = _client(server).chat.completions.create(model=MODEL_ID, messages=_audio_message(wavs[1], None))
    assert bare.choices[0].message.content == want
    assert bare.usage.prompt_tokens < reply.usage.prompt_tokens  # the prompt really has no instruction


def test_serve_refuses_what_is_not_a_model(tmp_path, capsys):
    from blspkd.bin import serve

    assert serve.main(["--model", str(tmp_path), "--port", "1"]) == 1  # a data error
    assert capsys.readouterr().err.startswith(f"python -m blspkd.bin.serve: error: {tmp_path} is not a BLSP-KD "
                                              "model: neither ")
    assert serve.main(["--model", str(tmp_path), "--api_key", " "]) == 2  # a usage error
    assert capsys.readouterr().err == ("python -m blspkd.bin.serve: error: --api_key is empty; give a non-empty key, "
                                       "or leave it out for no authentication\n")


def _post(server, body, **kw):
    data = body if isinstance(body, (bytes, str)) else json.dumps(body)
    return httpx.post(f"{server['url']}/v1/chat/completions", content=data, timeout=60,
                      headers={"Content-Type": "application/json"}, **kw)


def _error(response, status: int) -> dict:
    assert response.status_code == status, response.text
    err = response.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    return err


def test_bad_requests_get_4xx_saying_what_to_fix(server, wavs, tmp_path):
    good = {"model": MODEL_ID, "messages": _audio_message(wavs[1])}
    err = _error(_post(server, b'{"model": "x", "messages": [}'), 400)
    assert err["code"] == "invalid_json" and err["message"].startswith("the request body is not valid JSON (")
    err = _error(_post(server, {**good, "model": "gpt-4o"}), 404)
    assert err["message"] == f"The model 'gpt-4o' does not exist: this server serves '{MODEL_ID}' (GET /v1/models)"
    err = _error(_post(server, {"model": MODEL_ID}), 400)
    assert err["code"] == "missing_field" and err["param"] == "messages"
    text_only = {"model": MODEL_ID, "messages": [{"role": "user", "content": "hello"}]}
    err = _error(_post(server, text_only), 400)
    assert err["code"] == "missing_audio"
    assert err["message"].startswith("messages[0].content has 0 input_audio parts; send exactly one")
    with_system = {"model": MODEL_ID, "messages": [{"role": "system", "content": "be brief"}, *good["messages"]]}
    err = _error(_post(server, with_system), 400)
    assert err["message"].startswith("'messages' must be exactly one user message (got roles ['system', 'user'])")
    bad_b64 = json.loads(json.dumps(good))
    bad_b64["messages"][0]["content"][1]["input_audio"]["data"] = "not base64!"
    err = _error(_post(server, bad_b64), 400)
    assert err["code"] == "invalid_base64" and err["param"] == "messages[0].content[1].input_audio.data"
    bad_fmt = json.loads(json.dumps(good))
    bad_fmt["messages"][0]["content"][1]["input_audio"]["format"] = "doc"
    err = _error(_post(server, bad_fmt), 400)
    assert err["message"] == ("messages[0].content[1].input_audio.format is 'doc'; use one of wav, mp3, flac, ogg, "
                              "webm, opus, m4a, mp4, aac")
    not_audio = tmp_path / "notes.wav"
    not_audio.write_text("this is not audio\n")
    err = _error(_post(server, {"model": MODEL_ID, "messages": _audio_message(not_audio)}), 400)
    assert err["code"] == "invalid_audio"
    assert err["message"].startswith("cannot decode the audio of messages[0].content[1].input_audio (wav, 18 bytes): "
                                     "neither soundfile nor ffmpeg recognises it as audio")
    long = tmp_path / "long.wav"
    sf.write(long, np.zeros(16000 * 30 + 8000, dtype=np.float32), 16000)
    err = _error(_post(server, {"model": MODEL_ID, "messages": _audio_message(long)}), 400)
    assert re.fullmatch(r"the audio of messages\[0\]\.content\[1\]\.input_audio \(wav, \d+ bytes\) lasts 30\.5 s, "
                        r"longer than the 30 s the Whisper encoder takes; split it .*", err["message"])
    hour = tmp_path / "hour.flac"  # 1 h of silence: a small upload that decoding stops at 31 s
    subprocess.run(["sox", "-n", "-r", "16000", "-c", "1", str(hour), "trim", "0", "3600"], check=True)
    err = _error(_post(server, {"model": MODEL_ID, "messages": _audio_message(hour, fmt="flac")}), 400)
    assert " lasts 31 s or more, longer than the 30 s the Whisper encoder takes" in err["message"]
    err = _error(_post(server, {**good, "max_tokens": 10_000}), 400)
    assert err["message"] == f"'max_tokens' must be an integer from 1 to {MAX_TOKENS} (the server's " \
                             "--max_new_tokens), got 10000"
    err = _error(_post(server, {**good, "n": 2}), 400)
    assert err["param"] == "n"
    err = _error(httpx.get(f"{server['url']}/v1/chat/completions", timeout=10), 405)
    err = _error(httpx.get(f"{server['url']}/v2/nothing", timeout=10), 404)
    assert err["message"].startswith("no route GET /v2/nothing; the routes are")
    err = _error(_post(server, b"{" + b" " * (16 * 1024 * 1024)), 413)
    assert err["code"] == "request_too_large"
    # a client that goes away in the middle of a streamed answer
    with httpx.stream("POST", f"{server['url']}/v1/chat/completions", json={**good, "stream": True},
                      timeout=60) as response:
        assert response.status_code == 200
        assert next(response.iter_lines()).startswith("data: {")
    # the official client raises its own error classes with the server's message
    with pytest.raises(openai.BadRequestError, match="missing_audio|0 input_audio parts"):
        _client(server).chat.completions.create(model=MODEL_ID, messages=text_only["messages"])
    # and the server is still up and answering
    assert server["proc"].poll() is None
    assert _post(server, good).status_code == 200


def test_twenty_concurrent_requests_all_correct(server, wavs, expected):
    client = _client(server)
    jobs = [(wavs[i % 2], i % 3 == 0) for i in range(20)]  # two files, every third streamed

    def one(job):
        path, stream = job
        reply = _ask(client, path, stream)
        if stream:
            return _joined(reply), [c for c in reply if c.choices][-1].model_extra["blspkd"]["batch_size"]
        return reply.choices[0].message.content, reply.model_extra["blspkd"]["batch_size"]

    with concurrent.futures.ThreadPoolExecutor(max_workers=20) as pool:
        answers, batch_sizes = zip(*pool.map(one, jobs, timeout=300))
    assert list(answers) == [expected[path] for path, _ in jobs]
    # streamed answers run alone; waiting non-streamed ones were batched (files of different lengths: padding)
    assert {b for b, (_, stream) in zip(batch_sizes, jobs) if stream} == {1}
    assert max(batch_sizes) > 1 and max(batch_sizes) <= 4  # the server's --max_batch_size
    assert server["proc"].poll() is None
    assert httpx.get(f"{server['url']}/v1/models", timeout=10).status_code == 200


def test_the_page_loads_nothing_from_elsewhere(server):
    html = httpx.get(f"{server['url']}/", timeout=10)
    assert html.status_code == 200 and "text/html" in html.headers["content-type"]
    assets = re.findall(r'(?:src|href)="([^"]+)"', html.text)
    assert sorted(assets) == ["/static/app.js", "/static/style.css"]
    for asset in assets:
        body = httpx.get(f"{server['url']}{asset}", timeout=10)
        assert body.status_code == 200
        assert not re.search(r"https?://|url\(|@import|//cdn", body.text), f"{asset} refers to another server"
    config = httpx.get(f"{server['url']}/api/config", timeout=10).json()
    assert [t["name"] for t in config["tasks"]] == ["transcribe", "translate", "continue", "answer"]
    assert config["tasks"][0]["instruction"] == TRANSCRIBE and config["auth_required"] is False


def test_api_key_is_required_when_given(tiny_model_dir, wavs, expected):
    """In-process app (fastapi's TestClient), --api_key set: /v1 needs the bearer token, the page itself does not."""
    from fastapi.testclient import TestClient

    from blspkd.api import SpeechLLM
    from blspkd.serve import create_app

    app = create_app(SpeechLLM.from_pretrained(tiny_model_dir, "cpu"), MODEL_ID, api_key="s3cret",
                     max_new_tokens=MAX_TOKENS)
    with TestClient(app, base_url="http://127.0.0.1") as client:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cret"}):
            err = _error(client.get("/v1/models", headers=headers), 401)
            assert err["code"] == "invalid_api_key"
        _error(client.post("/v1/chat/completions", json={"model": MODEL_ID, "messages": []}), 401)
        assert client.get("/").status_code == 200
        assert client.get("/api/config").json()["auth_required"] is True
        reply = client.post("/v1/chat/completions", headers={"Authorization": "Bearer s3cret"},
                            json={"model": MODEL_ID, "messages": _audio_message(wavs[1])})
        assert reply.status_code == 200
        assert reply.json()["choices"][0]["message"]["content"] == expected[wavs[1]]


def _chrome():
    from blspkd.headless_page import NoBrowser, chromium

    pytest.importorskip("selenium.webdriver")
    try:
        return chromium()
    except NoBrowser as e:
        pytest.skip(str(e))


def test_page_in_headless_chromium(server, wavs, expected, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    driver = _chrome()
    try:
        driver.set_page_load_timeout(30)
        driver.get(f"{server['url']}/")
        WebDriverWait(driver, 30).until(lambda d: d.find_element(By.ID, "model-name").text == MODEL_ID)
        assert driver.find_element(By.ID, "instruction").get_attribute("value") == TRANSCRIBE
        assert not driver.find_element(By.ID, "key-row").is_displayed()  # no --api_key
        assert not driver.find_element(By.ID, "language-row").is_displayed()
        driver.find_element(By.ID, "task-translate").click()
        assert driver.find_element(By.ID, "language-row").is_displayed()
        assert driver.find_element(By.ID, "instruction").get_attribute("value") == \
            "Translate the following speech into German."
        driver.find_element(By.ID, "task-transcribe").click()
        driver.find_element(By.ID, "file").send_keys(str(wavs[0]))
        WebDriverWait(driver, 10).until(lambda d: d.find_element(By.ID, "send").is_enabled())
        driver.find_element(By.ID, "send").click()
        assert wait_done(driver) == "Done."
        # textContent: the exact string (.text is what is rendered; the random model writes control characters)
        assert driver.find_element(By.ID, "answer").get_attribute("textContent") == expected[wavs[0]]
        duration = driver.find_element(By.ID, "stat-duration").text
        assert duration == f"{sf.info(wavs[0]).duration:.2f} s"
        assert int(driver.find_element(By.ID, "stat-tokens").text) >= 1
        assert re.fullmatch(r"\d+\.\d{3} \(\d+\.\d\d s\)", driver.find_element(By.ID, "stat-rtf").text)
        driver.save_screenshot(str(tmp_path / "page.png"))
        assert (tmp_path / "page.png").stat().st_size > 10_000

        # the microphone (Chromium's fake device): MediaRecorder's WebM/Ogg goes through the server's ffmpeg
        driver.find_element(By.ID, "task-continue").click()
        assert driver.find_element(By.ID, "instruction").get_attribute("value") == \
            "Continue the following text in a coherent style: "
        driver.find_element(By.ID, "record").click()
        WebDriverWait(driver, 10).until(lambda d: d.find_element(By.ID, "record").text.endswith("Stop"))
        time.sleep(1.5)
        driver.find_element(By.ID, "record").click()
        WebDriverWait(driver, 10).until(lambda d: d.find_element(By.ID, "audio-info").text.startswith("recording."))
        driver.find_element(By.ID, "send").click()
        assert wait_done(driver) == "Done.", driver.find_element(By.ID, "status").text
        assert driver.find_element(By.ID, "answer").get_attribute("textContent").strip()
        assert 1.0 < float(driver.find_element(By.ID, "stat-duration").text.split()[0]) < 3.0
    finally:
        driver.quit()
