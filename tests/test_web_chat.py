"""The web chat page in a real browser (Debian's chromium driven by Playwright) against a live server."""

import shutil

import pytest
from test_serve import KEY, LiveServer

playwright = pytest.importorskip("playwright.sync_api")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed")


@pytest.fixture(scope="module")
def server(chat_model_dir):
    live = LiveServer(chat_model_dir)
    yield live
    live.stop()


def test_chat_page_streams_answer_and_thinking(server, tmp_path):
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
            "--disable-sync", "--no-first-run"])
        try:
            page = browser.new_page()
            page.goto(server.url + "/")
            page.wait_for_function("document.getElementById('model').textContent === 'tiny-chat'")
            page.fill("#apikey", KEY)
            page.fill("#input", "What is 6 times 7?")
            page.click("#send")
            answer = page.locator(".msg.assistant .answer")
            answer.wait_for()
            page.wait_for_function(
                "document.querySelector('.msg.assistant .usage').textContent.includes('cost')", timeout=30000)
            assert answer.inner_text() == "Answer: 42"
            thinking = page.locator(".msg.assistant details.thinking")
            assert thinking.locator("pre").text_content().strip() == "6 * 7 = 42"
            assert thinking.get_attribute("open") is None  # collapsed once the answer started
            thinking.locator("summary").click()
            assert thinking.get_attribute("open") is not None
            usage = page.locator(".msg.assistant .usage").inner_text()
            assert "completion tokens" in usage and "reasoning" in usage and "USD" in usage
            page.screenshot(path=str(tmp_path / "chat.png"), full_page=True)
            shutil.copy(tmp_path / "chat.png", "/tmp/r1lab-web-chat.png")
        finally:
            browser.close()


def test_chat_page_shows_auth_errors(server):
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu",
                                                                    "--disable-background-networking"])
        try:
            page = browser.new_page()
            page.goto(server.url + "/")
            page.fill("#input", "Say hi")
            page.click("#send")
            error = page.locator(".msg.assistant .error")
            error.wait_for()
            assert "401" in error.inner_text() and "API key" in error.inner_text()
        finally:
            browser.close()
