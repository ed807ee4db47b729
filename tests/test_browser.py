"""The web UI in real headless Chromium (Debian's chromium + chromium-driver, driven by selenium).

Sign in with the token, watch the live preview change, switch the method, upload a clip and
download its result. Screenshots for the README go to docs/screenshots/ when they are missing or
when DEID_UPDATE_SCREENSHOTS=1; otherwise to the test's temp folder, so runs leave the tree clean.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from livekit import AppThread, SecretDetector, write_clip
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions
from selenium.webdriver.support.ui import Select, WebDriverWait

from deid_sidecar.config import Method, parse_config
from deid_sidecar.engine.live import CameraPipeline
from deid_sidecar.web.server import build_app

pytestmark = pytest.mark.slow

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
TOKEN = "browser-test-token-42"
SCREENSHOTS = Path(__file__).resolve().parents[1] / "docs" / "screenshots"


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_clip(tmp_path_factory.mktemp("clip") / "street.mp4", seconds=3.0, fps=10)


@pytest.fixture
def server(clip: Path) -> Iterator[tuple[AppThread, CameraPipeline]]:
    config = parse_config(
        {"cameras": {"street": {"source": f"file:{clip}", "loop": True, "output": {"fps": 10}}}}
    )
    pipeline = CameraPipeline("street", config.cameras["street"], config, detector=SecretDetector())
    pipeline.start()
    app = build_app(
        {"street": pipeline}, TOKEN, None, config=config, detector_factory=lambda c, labels: SecretDetector()
    )
    try:
        with AppThread(app) as thread:
            yield thread, pipeline
    finally:
        pipeline.stop()


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[webdriver.Chrome]:
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--window-size=1280,1000",
        f"--user-data-dir={tmp_path / 'profile'}",
    ):
        options.add_argument(arg)
    # An explicit driver path: selenium never runs its manager, so nothing is downloaded.
    driver = webdriver.Chrome(options=options, service=Service(executable_path=CHROMEDRIVER))
    try:
        yield driver
    finally:
        driver.quit()


def screenshot_path(name: str, tmp_path: Path) -> Path:
    target = SCREENSHOTS / name
    if os.environ.get("DEID_UPDATE_SCREENSHOTS") == "1" or not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        return target
    return tmp_path / name


def wait_for(condition: Any, timeout: float = 20.0, step: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(step)
    raise AssertionError("condition not met in time")


def test_ui_preview_settings_and_upload(
    server: tuple[AppThread, CameraPipeline], browser: webdriver.Chrome, clip: Path, tmp_path: Path
) -> None:
    app, pipeline = server
    wait = WebDriverWait(browser, 20)
    browser.get(app.url("/"))
    wait.until(expected_conditions.url_contains("/login"))
    browser.find_element(By.ID, "token").send_keys(TOKEN)
    browser.find_element(By.ID, "login").click()

    # Cameras page: the anonymized preview updates (two different frames).
    preview = wait.until(expected_conditions.presence_of_element_located((By.CSS_SELECTOR, "img.preview")))
    wait_for(lambda: browser.execute_script("return arguments[0].naturalWidth", preview) > 0)
    first = preview.screenshot_as_png
    second = wait_for(lambda: (shot := preview.screenshot_as_png) != first and shot)
    assert second != first
    wait.until(expected_conditions.text_to_be_present_in_element((By.CSS_SELECTOR, ".badge"), "online"))

    # A setting changes the running pipeline.
    Select(browser.find_element(By.CSS_SELECTOR, "[data-role=method]")).select_by_value("pixelate")
    wait_for(lambda: pipeline.processor.anonymizer.method is Method.PIXELATE)
    wait.until(expected_conditions.text_to_be_present_in_element((By.ID, "message"), "method changed"))
    time.sleep(1.0)  # let the preview show the new method before the screenshot
    browser.execute_script("document.activeElement.blur(); window.scrollTo(0, 0)")
    browser.save_screenshot(str(screenshot_path("cameras.png", tmp_path)))

    # Jobs page: upload a clip, wait for it, download the result through the browser's session.
    browser.find_element(By.LINK_TEXT, "Jobs").click()
    browser.find_element(By.ID, "file").send_keys(str(clip))
    browser.find_element(By.ID, "upload").click()
    link = wait.until(
        expected_conditions.presence_of_element_located(
            (By.CSS_SELECTOR, "tr[data-state=done] a[data-role=result]")
        )
    )
    fetched = browser.execute_async_script(
        """const done = arguments[arguments.length - 1];
           fetch(arguments[0]).then(r => r.arrayBuffer()).then(b => {
             const head = new Uint8Array(b.slice(4, 8));
             done([b.byteLength, String.fromCharCode(...head)]);
           });""",
        link.get_attribute("href"),
    )
    assert fetched[0] > 1000 and fetched[1] == "ftyp"  # an MP4
    browser.save_screenshot(str(screenshot_path("jobs.png", tmp_path)))
