"""Headless Chromium for the web page's tests: Debian's `chromium` and `chromium-driver`
(`make browser` installs them, as CI does), driven by Selenium through that driver, so
nothing is downloaded at run time. Without them a test is skipped with the reason,
except under CI (`CI=true`), where the missing browser fails it."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

from support.project import PROJECT

BROWSER = ("/usr/bin/chromium", "/usr/bin/chromedriver")
ARTIFACTS = Path(os.environ.get("MEDRAY_TEST_ARTIFACTS", PROJECT / "test-artifacts"))
"""Where the screenshots are saved, a folder per page."""


def system_browser() -> tuple[str, str]:
    """(chromium, chromedriver), or skip (fail under CI) naming what is missing."""
    found = [path if Path(path).is_file() else shutil.which(Path(path).name) for path in BROWSER]
    if all(found):
        return found[0], found[1]
    reason = ("the browser tests need Debian's chromium and chromium-driver (`make browser` installs them "
              "as root); not found: " + ", ".join(Path(p).name for p, f in zip(BROWSER, found) if not f))
    if os.environ.get("CI") == "true":
        pytest.fail(reason + " (CI=true: a skipped browser test fails the suite)", pytrace=False)
    pytest.skip(reason)


def start_chromium(width: int = 1280, height: int = 1000):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    chromium, driver = system_browser()
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    # The closed network refuses Chromium's own background connections: switch them off.
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic",
                 "--no-first-run", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--disable-extensions", f"--window-size={width},{height}",
                 f"--user-data-dir={tempfile.mkdtemp(prefix='medray-chromium-')}"):
        options.add_argument(flag)
    return webdriver.Chrome(service=Service(executable_path=driver), options=options)


def screenshot(browser, name: str, folder: str = "web-page") -> Path:
    """The whole page, beyond the window's height, as FOLDER/NAME.png."""
    import base64

    (ARTIFACTS / folder).mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / folder / f"{name}.png"
    width, height = browser.execute_script(
        "return [window.innerWidth, document.documentElement.scrollHeight]")
    shot = browser.execute_cdp_cmd("Page.captureScreenshot", {
        "format": "png", "captureBeyondViewport": True,
        "clip": {"x": 0, "y": 0, "width": width, "height": height, "scale": 1}})
    path.write_bytes(base64.b64decode(shot["data"]))
    return path


def images_once_loaded(browser, timeout: float = 30.0) -> list[bool]:
    """Whether each image on the page decoded (it has a width), asked once every image has
    finished loading or failed: on a loaded machine, `get` can return before the last one."""
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(browser, timeout).until(
        lambda b: b.execute_script("return [...document.images].every(i => i.complete)"))
    return browser.execute_script("return [...document.images].map(i => i.naturalWidth > 0)")
