#!/usr/bin/env python3
"""Screenshot of ``python -m blspkd.bin.serve``'s page answering one utterance with a trained model (the README's).

Usage (from egs/mini_espeak, after ./run.sh wrote exp/finetune/export):
    wav=$(sed -n 1p data/test/wav.scp | cut -d' ' -f2)
    python local/serve_screenshot.py --model exp/finetune/export --audio "${wav}" --out serve_page.png

Starts the server on 127.0.0.1 (a free port), opens the page in headless Chromium (blspkd/headless_page.py), picks the
file, asks the transcription task, waits for the streamed answer, saves the screenshot and prints the answer with the
page's statistics.
"""
from __future__ import annotations

import argparse
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from blspkd.headless_page import chromium, wait_done


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_up(url: str, proc: subprocess.Popen, seconds: float = 300) -> None:
    deadline = time.time() + seconds
    while time.time() < deadline:
        if proc.poll() is not None:
            sys.exit(f"the server exited with code {proc.returncode} (its output is above)")
        try:
            urllib.request.urlopen(f"{url}/v1/models", timeout=5).read()
            return
        except OSError:
            time.sleep(1)
    sys.exit(f"the server did not answer {url}/v1/models within {seconds:.0f} s")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="exported dir (stage 8), model dir or experiment dir")
    p.add_argument("--audio", required=True, help="the audio file the page sends")
    p.add_argument("--out", default="serve_page.png", help="the screenshot (default: %(default)s)")
    p.add_argument("--served_model_name", default=None, help="the model name the page shows (default: --model)")
    args = p.parse_args()
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    cmd = [sys.executable, "-m", "blspkd.bin.serve", "--model", args.model, "--port", str(port)]
    if args.served_model_name:
        cmd += ["--served_model_name", args.served_model_name]
    server = subprocess.Popen(cmd)
    driver = None
    try:
        wait_up(url, server)
        driver = chromium()
        driver.set_page_load_timeout(60)
        driver.get(f"{url}/")
        WebDriverWait(driver, 60).until(lambda d: d.find_element(By.ID, "model-name").text)
        driver.find_element(By.ID, "task-transcribe").click()
        driver.find_element(By.ID, "file").send_keys(str(Path(args.audio).resolve()))
        WebDriverWait(driver, 10).until(lambda d: d.find_element(By.ID, "send").is_enabled())
        driver.find_element(By.ID, "send").click()
        status = wait_done(driver, 300)
        driver.save_screenshot(args.out)
        stats = {name: driver.find_element(By.ID, f"stat-{name}").text for name in ("duration", "tokens", "rtf")}
        print(f"status: {status}\nanswer: {driver.find_element(By.ID, 'answer').get_attribute('textContent')}\n"
              f"duration {stats['duration']}, speech tokens {stats['tokens']}, real-time factor {stats['rtf']}\n"
              f"screenshot: {args.out}")
        return 0 if status == "Done." else 1
    finally:
        if driver is not None:
            driver.quit()
        server.terminate()
        server.wait(timeout=30)


if __name__ == "__main__":
    sys.exit(main())
