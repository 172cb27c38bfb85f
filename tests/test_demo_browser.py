"""The web demo in a real headless browser: Debian's chromium + chromium-driver driven by Selenium.

The app is served on 127.0.0.1 on a free port by a thread of this process; the browser asks without audio (the
page says what is missing), uploads a clip, asks, and the answer streams in beside Whisper's transcript.
"""

import shutil

import pytest
from conftest import free_port
from transformers import pipeline

from desta_audio import demo
from desta_audio.demo.session import DEFAULT_MAX_NEW_TOKENS
from processing import DEFAULT_SYSTEM_PROMPT

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
CLIP = demo.EXAMPLES_DIR / "open_the_door.wav"
QUESTION = "What does the speaker ask for?"
WAIT_SECONDS = 40

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not (shutil.which(CHROMIUM) and shutil.which(CHROMEDRIVER)),
        reason=f"no browser: install Debian's chromium and chromium-driver ({CHROMIUM}, {CHROMEDRIVER})",
    ),
]


@pytest.fixture(scope="module")
def served(real_whisper_model_dir):
    port = free_port()
    app = demo.launch(str(real_whisper_model_dir), host="127.0.0.1", port=port, device="cpu", block=False)
    yield f"http://127.0.0.1:{port}/"
    app.close()


@pytest.fixture()
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM  # with the driver's path given too, Selenium Manager never runs
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,1000"):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    yield driver
    driver.quit()


def test_upload_ask_and_watch_the_answer_stream_in(served, browser, tmp_path, real_whisper_model_dir):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    def text_of(selector):
        return browser.find_element(By.CSS_SELECTOR, selector).text

    def bot_messages():
        return [
            element.get_attribute("aria-label").removeprefix("bot's message: ")
            for element in browser.find_elements(By.CSS_SELECTOR, "#chat [data-testid=bot]")
        ]

    wait = WebDriverWait(browser, WAIT_SECONDS, poll_frequency=0.05)
    browser.get(served)
    wait.until(lambda _: "Ready:" in text_of("#model-status"))
    assert "Running on CPU" in text_of("#model-status")

    box = browser.find_element(By.CSS_SELECTOR, "#question textarea")
    box.send_keys(QUESTION, Keys.ENTER)  # no audio yet: the page says so, no stack trace
    wait.until(lambda _: demo.NO_AUDIO in text_of("#notice"))
    assert "Traceback" not in browser.page_source

    browser.find_element(By.CSS_SELECTOR, "#question input[type=file]").send_keys(str(CLIP))
    wait.until(lambda _: browser.find_elements(By.CSS_SELECTOR, '#question [aria-label="File thumbnail"]'))
    browser.find_element(By.CSS_SELECTOR, "#question textarea").send_keys(Keys.ENTER)

    transcripts = browser.find_element(By.CSS_SELECTOR, "#transcripts textarea")
    lengths = []

    def finished(_):
        answers = bot_messages()
        if answers:
            lengths.append(len(answers[-1]))
        return transcripts.get_attribute("value") not in ("", "…")

    wait.until(finished)
    browser.save_screenshot(str(tmp_path / "demo.png"))

    assert transcripts.get_attribute("value") == "open_the_door.wav: Please open the door."
    assert not text_of("#notice")
    assert bot_messages() == [expected_answer(real_whisper_model_dir)]
    assert len(set(lengths)) >= 2, f"the answer did not arrive in pieces: lengths seen {lengths}"
    assert (tmp_path / "demo.png").stat().st_size > 10_000


def expected_answer(model_dir) -> str:
    """The pipeline's own greedy answer to what the page sent (default system prompt and settings)."""
    pipe = pipeline("audio-text-to-text", model=str(model_dir), trust_remote_code=True, device="cpu")
    conversation = [
        {"role": "system", "content": [{"type": "text", "text": DEFAULT_SYSTEM_PROMPT}]},
        {"role": "user", "content": [{"type": "audio", "path": str(CLIP)}, {"type": "text", "text": QUESTION}]},
    ]
    return pipe(conversation, **demo.generation_kwargs(DEFAULT_MAX_NEW_TOKENS, 0.0))["generated_text"]
