"""Helpers to serve search.dashboard on localhost and drive Debian's chromium headless (selenium + chromedriver).

Used by tests/test_dashboard.py and scripts/screenshot.py.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Iterator

ROOT = Path(__file__).resolve().parent.parent
CHROME_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking")


def chromium_path() -> str | None:
    return next((p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None)


def browser_missing() -> str | None:
    """Why the browser tests cannot run here, or None."""
    if chromium_path() is None:
        return "chromium not installed (apt-get install chromium chromium-driver)"
    if shutil.which("chromedriver") is None:
        return "chromedriver not installed (apt-get install chromium-driver)"
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium not installed (pip install -e '.[test]')"
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get_json(url: str, timeout: float = 30) -> dict:
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return json.loads(r.read())


@contextlib.contextmanager
def serve_dashboard(storage: str, env: dict[str, str], *extra: str, startup_s: float = 90) -> Iterator[str]:
    """Run ``python -m search.dashboard`` on a free localhost port; yield its base URL."""
    port = free_port()
    # The server logs every request: a file, not a pipe nobody reads (a full pipe would stall it).
    log = tempfile.TemporaryFile(mode="w+")
    proc = subprocess.Popen([sys.executable, "-m", "search.dashboard", "--storage", storage, "--port", str(port),
                             *extra], env=env, stdout=log, stderr=subprocess.STDOUT, text=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + startup_s
        while True:
            if proc.poll() is not None:
                log.seek(0)
                raise RuntimeError(f"search.dashboard exited {proc.returncode}: {log.read()}")
            try:
                get_json(f"{base}/api/studies", timeout=5)
                break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                if time.monotonic() > deadline:
                    raise RuntimeError(f"search.dashboard did not answer on {base} within {startup_s} s")
                time.sleep(0.3)
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


@contextlib.contextmanager
def chrome(width: int = 1400, height: int = 1000):
    """A headless chromium driven through Debian's chromedriver (no driver download)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = chromium_path()
    for flag in (*CHROME_FLAGS, f"--window-size={width},{height}"):
        opts.add_argument(flag)
    driver = webdriver.Chrome(options=opts, service=Service(shutil.which("chromedriver")))
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()


def wait_for(driver, script: str, timeout: float = 60, what: str = ""):
    """Poll a JavaScript expression until it returns something truthy; return it."""
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout, poll_frequency=0.25).until(
        lambda d: d.execute_script(f"return {script}"), message=what or script)


PARETO_POINTS_JS = "document.querySelectorAll('#graph-pareto-front .scatterlayer .point').length"
ARTIFACT_IMAGES_JS = ("[...document.images].filter(i => i.src.includes('/artifacts/'))"
                      ".map(i => ({src: i.src, complete: i.complete, width: i.naturalWidth}))")
# Truthy (the list) once at least two artifact images are on the page and every one has loaded.
ARTIFACTS_LOADED_JS = (f"(() => {{ const a = {ARTIFACT_IMAGES_JS}; "
                       "return a.length >= 2 && a.every(i => i.complete && i.width > 0) && a; })()")
