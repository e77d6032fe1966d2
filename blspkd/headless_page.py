"""Drive ``python -m blspkd.bin.serve``'s page in headless Chromium (selenium): the browser test of the suite and the
mini recipe's screenshot (egs/mini_espeak/local/serve_screenshot.py) both use it. Needs Debian's ``chromium`` and
``chromium-driver`` and the ``selenium`` package (tools/install.sh installs them)."""
from __future__ import annotations

import shutil

BROWSERS = ("chromium", "chromium-browser", "google-chrome")


class NoBrowser(RuntimeError):
    """Chromium, its driver or selenium is missing (the message says what to install)."""


def chromium(width: int = 900, height: int = 1100):
    """A headless Chromium webdriver that grants the page a fake microphone and uses no proxy."""
    binary = next((shutil.which(n) for n in BROWSERS if shutil.which(n)), None)
    if binary is None:
        raise NoBrowser("no chromium to drive (apt-get install chromium chromium-driver; tools/install.sh does)")
    driver_path = shutil.which("chromedriver")
    if driver_path is None:
        raise NoBrowser("chromedriver not found (apt-get install chromium-driver; tools/install.sh does)")
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        raise NoBrowser("selenium is not installed (pip install selenium; tools/install.sh does)") from None
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                f"--window-size={width},{height}", "--use-fake-ui-for-media-stream",
                "--use-fake-device-for-media-stream", "--no-proxy-server"):
        options.add_argument(arg)
    return webdriver.Chrome(service=Service(driver_path), options=options)


def wait_done(driver, seconds: float = 90) -> str:
    """Wait until the page's status says the answer is complete (or shows an error); returns the status text."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(driver, seconds).until(
        lambda d: d.find_element(By.ID, "status").text in ("Done.",) or "error" in
        d.find_element(By.ID, "status").get_attribute("class"))
    return driver.find_element(By.ID, "status").text
