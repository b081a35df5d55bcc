"""What the browser tests share: the appliance's three processes on 127.0.0.1 (API, worker,
inference server) on one data directory, Debian's Chromium with every request recorded, the
axe-core checks (vendored in appliance/web/vendor), and the kiosk page's steps."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
from conftest import api_server
from test_inference import KEY, Server

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = "/usr/bin/chromium"
AXE = ROOT / "appliance" / "web" / "vendor" / "axe.min.js"
ARTIFACTS = ROOT / "tests" / "artifacts" / "web"  # every page's screenshot, kept after the run
SCREENSHOTS = ROOT / "docs" / "screenshots"  # the README's, refreshed with APPLIANCE_UPDATE_SCREENSHOTS=1
TOKEN = "web-token"
LONG = 300_000  # ms: a bound for what the worker does on a loaded 2-core machine, never a sleep
# Fast evaluations: no retention probe, short answers (the gate and the comparison work the same).
ENV = {"APPLIANCE_KIOSK_KEY": KEY, "APPLIANCE_EVAL_RETENTION_PROBE": "false", "APPLIANCE_EVAL_MAX_TOKENS": "24",
       "APPLIANCE_WORKER_POLL_S": "0.2", "APPLIANCE_KIOSK_WELCOME": "Welcome to the clinic. Ask me anything.",
       "APPLIANCE_KIOSK_IDLE_RESET_S": "8"}
# What axe checks: labels on inputs, names of buttons, links and images, contrast, the document's language.
AXE_RULES = ["label", "select-name", "button-name", "link-name", "image-alt", "color-contrast", "html-has-lang",
             "document-title", "duplicate-id-aria", "aria-allowed-attr", "aria-valid-attr-value"]


@dataclass
class Appliance:
    api: str
    inference: str
    data: Path


@contextlib.contextmanager
def appliance(data: Path) -> Iterator[Appliance]:
    inference = Server(data, **ENV)
    env = {**ENV, "APPLIANCE_INFERENCE_PORT": str(inference.port)}
    log = (data.parent / "worker.log").open("ab")
    worker_env = {**os.environ, "APPLIANCE_DATA_DIR": str(data), "APPLIANCE_ADMIN_TOKEN": TOKEN, **env}
    worker = subprocess.Popen([sys.executable, "-m", "appliance.cli", "worker"], stdout=log, stderr=subprocess.STDOUT,
                              env=worker_env)
    try:
        with api_server(data, TOKEN, **env) as api:
            inference.start()
            yield Appliance(api=api, inference=inference.base, data=data)
    finally:
        inference.stop()
        worker.terminate()
        worker.wait(60)
        log.close()


@dataclass
class Requests:
    """Every URL the browser asked for; `foreign()` lists those on another host than the appliance's."""

    allowed: set[str]
    urls: list[str] = field(default_factory=list)

    def foreign(self) -> list[str]:
        return [u for u in self.urls
                if urlsplit(u).scheme not in ("data", "blob") and urlsplit(u).netloc not in self.allowed]


@contextlib.contextmanager
def chromium(box: Appliance, lang: str = "en-US") -> Iterator[tuple[Any, Requests]]:
    from playwright.sync_api import sync_playwright

    requests = Requests(allowed={urlsplit(box.api).netloc, urlsplit(box.inference).netloc})
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update"])
        # bypass_csp: axe is injected as an inline script; what the page loads is checked by `requests`.
        context = browser.new_context(viewport={"width": 1280, "height": 800}, locale=lang, bypass_csp=True)
        context.on("request", lambda r: requests.urls.append(r.url))
        try:
            yield context, requests
        finally:
            browser.close()


def axe_violations(page: Any) -> list[str]:
    page.add_script_tag(path=str(AXE))
    found: list[str] = page.evaluate(
        """async (rules) => (await axe.run(document, {runOnly: {type: "rule", values: rules}})).violations
             .map((v) => `${v.id}: ${v.nodes.map((n) => n.target.join(" ")).join(", ")}`)""", AXE_RULES)
    return found


def focus_order(page: Any, presses: int) -> list[str]:
    """The ids focused by pressing Tab from the focused element."""
    ids = []
    for _ in range(presses):
        page.keyboard.press("Tab")
        ids.append(page.evaluate("document.activeElement.id"))
    return ids


def screenshot(page: Any, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    page.evaluate("window.scrollTo(0, 0)")
    page.screenshot(path=str(path), full_page=True)
    if os.environ.get("APPLIANCE_UPDATE_SCREENSHOTS") == "1":
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, SCREENSHOTS / path.name)


def api(box: Appliance, path: str) -> Any:
    return httpx.get(box.api + path, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30).json()


def drop_file(page: Any, name: str, text: str) -> None:
    """A file dropped on the drop zone, as a person drags it from the desktop."""
    transfer = page.evaluate_handle("""([name, text]) => { const dt = new DataTransfer();
        dt.items.add(new File([text], name, { type: "application/json" })); return dt; }""", [name, text])
    page.dispatch_event("#drop", "drop", {"dataTransfer": transfer})


def kiosk(page: Any, box: Appliance) -> None:
    from playwright.sync_api import expect

    page.set_default_timeout(60_000)
    page.goto(box.inference + "/#key=wrong-key")
    expect(page.locator("#key-error")).to_contain_text("refused")
    expect(page.locator("#chat")).to_be_hidden()
    expect(page.locator("#key")).to_be_focused()
    assert focus_order(page, 1) == ["key-submit"]
    assert axe_violations(page) == []
    page.fill("#key", KEY)
    page.press("#key", "Enter")
    expect(page.locator("#log")).to_contain_text("Welcome to the clinic")
    expect(page.locator("#question")).to_be_focused()
    assert focus_order(page, 1) == ["ask"]
    page.fill("#question", "Where is the lab?")
    page.press("#question", "Enter")
    answer = page.locator("#log .msg.assistant").last
    expect(answer).to_have_attribute("data-streaming", "false", timeout=LONG)
    assert answer.inner_text().strip()
    screenshot(page, "kiosk")
    assert axe_violations(page) == []
    page.get_by_role("button", name="New conversation").click()
    expect(page.locator("#log .msg")).to_have_count(1)  # the welcome alone
    # Left alone (APPLIANCE_KIOSK_IDLE_RESET_S=8), the next customer finds a fresh conversation.
    page.fill("#question", "Where is the pharmacy?")
    page.press("#question", "Enter")
    expect(page.locator("#log .msg")).to_have_count(3)
    expect(page.locator("#log .msg")).to_have_count(1, timeout=LONG)
    expect(page.locator("#log")).to_contain_text("Welcome to the clinic")
    assert page.evaluate("location.hash") == ""  # the key does not stay in the address bar
    # An answer that breaks after its 200 (the server sends OpenAI's error chunk in the stream) is shown
    # as a failure, not as a short answer, and is not kept in the conversation.
    broken = ('data: {"choices": [{"index": 0, "delta": {"content": "The lab is"}, "finish_reason": null}]}\n\n'
              'data: {"error": {"message": "generation failed", "type": "server_error"}}\n\n')
    page.route("**/v1/chat/completions", lambda route: route.fulfill(
        status=200, headers={"Content-Type": "text/event-stream"}, body=broken))
    page.fill("#question", "Where is the lab?")
    page.press("#question", "Enter")
    failed = page.locator("#log .msg.assistant").last
    expect(failed).to_have_attribute("data-streaming", "false", timeout=LONG)
    expect(failed).to_have_class(re.compile(r"\berror\b"))
    expect(failed).to_have_text("Sorry, something went wrong. Please try again.")
    page.unroute("**/v1/chat/completions")
