"""demo/app.py in a real browser: headless Chromium (Debian's chromium + chromium-driver, driven by
Selenium) opens the page on localhost, uploads a photograph, names a custom vocabulary and reads
the drawn image and the table of detections; missing or broken input gives a message on the page.

The screenshot goes to $GRIDCLIP_WEB_TEST_SCREENSHOT when set (the README's picture was taken so,
with GRIDCLIP_WEB_TEST_WEIGHTS / _IMAGE / _VOCABULARY naming the trained embedded default, one of
its validation images and the classes to name); otherwise to the test's temporary folder.
"""

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request

import pytest
from matplotlib import cbook

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(REPO, "configs", "GridCLIP_synthetic.yaml")
CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not (CHROMIUM and CHROMEDRIVER),
        reason="headless Chromium is not installed: "
        "apt-get install chromium chromium-driver (.ci/run does)",
    ),
]


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def page_url(tmp_path_factory, synthetic_weights):
    """demo/app.py serving a GridCLIP checkpoint (the small CLIP's backbone, a random head, unless
    GRIDCLIP_WEB_TEST_WEIGHTS names trained weights) on a free local port."""
    weights = os.environ.get("GRIDCLIP_WEB_TEST_WEIGHTS") or synthetic_weights
    root = tmp_path_factory.mktemp("web")
    port = _free_port()
    log = open(root / "app.log", "w")
    env = dict(os.environ, GRADIO_ANALYTICS_ENABLED="False")
    server = subprocess.Popen(
        [
            sys.executable,
            os.path.join(REPO, "demo", "app.py"),
            "--config-file",
            CONFIG,
            "--port",
            str(port),
            "--opts",
            "MODEL.WEIGHTS",
            weights,
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
        cwd=REPO,
    )
    url = f"http://127.0.0.1:{port}/"
    deadline = time.time() + 180
    while True:
        try:
            urllib.request.urlopen(url, timeout=5)
            break
        except OSError:
            if server.poll() is not None or time.time() > deadline:
                server.kill()
                pytest.fail(f"demo/app.py did not start:\n{(root / 'app.log').read_text()[-3000:]}")
            time.sleep(1)
    yield url
    server.terminate()
    server.wait(timeout=30)
    log.close()


@pytest.fixture(scope="module")
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-quic",
        "--disable-component-update",
        "--disable-sync",
        "--window-size=1280,1000",
    ]:
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    yield driver
    driver.quit()


def _detect_and_wait(driver, previous_status=None):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    def answered(d):  # Gradio's progress tracker hidden again, and a new message
        tracker = d.find_element(By.CSS_SELECTOR, "#status [data-testid=status-tracker]")
        text = d.find_element(By.CSS_SELECTOR, "#status [data-testid=markdown]").text
        done = "hide" in (tracker.get_attribute("class") or "").split()
        return done and text and text != previous_status and text

    driver.find_element(By.CSS_SELECTOR, "#detect").click()
    return WebDriverWait(driver, 120).until(answered)


def _type(element, text):
    from selenium.webdriver.common.keys import Keys

    element.send_keys(Keys.CONTROL, "a")
    element.send_keys(Keys.DELETE)
    element.send_keys(text, Keys.TAB)


def test_page_detects_a_custom_vocabulary_in_a_photograph(page_url, browser, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    photo = cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)
    image = os.path.abspath(os.environ.get("GRIDCLIP_WEB_TEST_IMAGE") or photo)
    vocabulary = os.environ.get("GRIDCLIP_WEB_TEST_VOCABULARY", "person, necktie, flag")
    names = [n.strip() for n in vocabulary.split(",")]
    browser.get(page_url)
    WebDriverWait(browser, 60).until(lambda d: d.find_elements(By.CSS_SELECTOR, "#detect"))
    textbox = browser.find_element(By.CSS_SELECTOR, "#vocabulary textarea")
    assert textbox.get_attribute("value").startswith("red circle, ")  # the model's training classes

    status = _detect_and_wait(browser)
    assert status == "Upload an image or pick an example first."

    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"this is not a picture")
    browser.find_element(By.CSS_SELECTOR, "#image input[type=file]").send_keys(str(broken))
    time.sleep(2)
    status = _detect_and_wait(browser, status)
    assert status.startswith("The uploaded file is not an image that can be read")
    assert "Traceback" not in browser.find_element(By.TAG_NAME, "body").text

    browser.find_element(By.CSS_SELECTOR, "#image button[aria-label='Remove Image']").click()
    browser.find_element(By.CSS_SELECTOR, "#image input[type=file]").send_keys(image)
    _type(textbox, vocabulary)
    if (
        "GRIDCLIP_WEB_TEST_WEIGHTS" not in os.environ
    ):  # a random head scores lower than a trained one
        _type(browser.find_element(By.CSS_SELECTOR, "#threshold input[type=number]"), "0.6")
    time.sleep(2)
    status = _detect_and_wait(browser, status)
    assert "detection(s) at score >=" in status, status

    def table_cells(d):  # the table's visible text: its header, then 6 cells a detection
        lines = [
            t.strip()
            for t in d.find_element(By.CSS_SELECTOR, "#detections").text.split("\n")
            if t.strip()
        ]
        header = lines.index("class") if "class" in lines else -1
        return (
            header >= 0
            and lines[header : header + 6] == ["class", "score", "x0", "y0", "x1", "y1"]
            and lines[header + 6 :]
        )

    rows = WebDriverWait(browser, 30).until(table_cells)
    classes = rows[0::6]
    assert all(0 <= float(score) <= 1 for score in rows[1::6])
    assert classes and set(classes) <= set(names), (status, rows)
    result = browser.find_element(By.CSS_SELECTOR, "#result img")
    assert result.get_attribute("src") and result.get_attribute("naturalWidth") not in (None, "0")

    screenshot = os.environ.get("GRIDCLIP_WEB_TEST_SCREENSHOT") or str(tmp_path / "page.png")
    assert browser.save_screenshot(screenshot) and os.path.getsize(screenshot) > 10_000

    _type(textbox, " , ")
    status = _detect_and_wait(browser, status)
    assert status.startswith("Vocabulary: empty vocabulary")
    browser.find_element(By.CSS_SELECTOR, "#preset-lvis").click()
    WebDriverWait(browser, 30).until(lambda d: textbox.get_attribute("value").count(",") == 1202)


def test_page_adds_an_example_crop_under_a_name(page_url, browser):
    """ "Classes by example": an example region named on the page names detections beside the
    typed classes; a box outside the image is refused with a message."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    photo = os.path.abspath(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False))
    browser.get(page_url)
    WebDriverWait(browser, 60).until(lambda d: d.find_elements(By.CSS_SELECTOR, "#detect"))
    browser.find_element(By.CSS_SELECTOR, "#by-example button").click()  # open the accordion
    WebDriverWait(browser, 30).until(
        lambda d: d.find_element(By.CSS_SELECTOR, "#example-name textarea, #example-name input")
    )
    browser.find_element(By.CSS_SELECTOR, "#example-image input[type=file]").send_keys(photo)
    name = browser.find_element(By.CSS_SELECTOR, "#example-name textarea, #example-name input")
    box = browser.find_element(By.CSS_SELECTOR, "#example-box textarea, #example-box input")
    time.sleep(2)

    def added(previous):
        def check(d):
            text = d.find_element(By.CSS_SELECTOR, "#example-status [data-testid=markdown]").text
            return text and text != previous and text

        browser.find_element(By.CSS_SELECTOR, "#add-example").click()
        return WebDriverWait(browser, 120).until(check)

    _type(name, "her tie")
    _type(box, "0, 0, 900, 50")
    message = added(None)
    assert message.startswith("Example not added") and "not inside the image" in message
    _type(box, "220, 430, 300, 560")
    message = added(message)
    assert message.startswith("Added an example of 'her tie'"), message
    assert "her tie" in browser.find_element(By.CSS_SELECTOR, "#examples").text

    browser.find_element(By.CSS_SELECTOR, "#image input[type=file]").send_keys(photo)
    _type(browser.find_element(By.CSS_SELECTOR, "#vocabulary textarea"), "person, flag")
    _type(browser.find_element(By.CSS_SELECTOR, "#threshold input[type=number]"), "0")
    time.sleep(2)
    status = _detect_and_wait(browser)
    assert "among 3 class(es)" in status, status
    text = browser.find_element(By.CSS_SELECTOR, "#detections").text
    assert "her tie" in text or "person" in text or "flag" in text
