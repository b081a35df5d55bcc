"""The web page in a real browser (Debian's Chromium driven by Playwright) against a real server:
log in with the token, upload a dataset, see a bad upload's errors, queue a run and see it listed."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from conftest import api_server
from samples import ALPACA, jsonl

CHROMIUM = "/usr/bin/chromium"


@pytest.fixture(autouse=True)
def chromium() -> None:
    # Never a skip: a browser test that prints SKIPPED and passes tells nothing. `make test` installs
    # Chromium when run as root (see the Makefile); otherwise this says what to run.
    if not Path(CHROMIUM).exists():
        pytest.fail(f"the web-page tests drive Debian's Chromium ({CHROMIUM}), which is not installed: run "
                    "`sudo apt-get install chromium` (or `make test` as root, which installs it)", pytrace=False)


@pytest.fixture
def server(data_dir: Path) -> Iterator[str]:
    with api_server(data_dir, "web-token") as base:
        yield base


def test_page_logs_in_uploads_and_queues_a_run(server: str, tmp_path: Path) -> None:
    from playwright.sync_api import expect, sync_playwright

    good = tmp_path / "clinic-faq.jsonl"
    good.write_bytes(jsonl(ALPACA))
    bad = tmp_path / "broken.jsonl"
    bad.write_text('{"instruction": "a", "output": "b"}\n{"instruction": "c", "output": ""}\n')
    with sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=CHROMIUM,
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update"],
        )
        page = browser.new_page()
        page.goto(server + "/")
        expect(page.locator("#login")).to_be_visible()
        page.fill("#token", "wrong")
        page.click("#login-form button")
        expect(page.locator("#login-error")).to_contain_text("refused")
        page.fill("#token", "web-token")
        page.click("#login-form button")
        expect(page.locator("#models")).to_contain_text("smollm2-135m-instruct")

        page.set_input_files("#file", str(bad))
        page.click("#upload-btn")
        expect(page.locator("#upload-result")).to_contain_text("line 2 output: empty assistant response")

        page.set_input_files("#file", str(good))
        page.click("#upload-btn")
        expect(page.locator("#upload-result")).to_contain_text("3 rows")
        expect(page.locator("#datasets")).to_contain_text("clinic-faq.jsonl")

        page.fill("#run-steps", "5")
        page.click("#run-form button")
        expect(page.locator("#run-result")).to_contain_text("Queued run_")
        expect(page.locator("#runs")).to_contain_text("queued")
        page.screenshot(path=str(tmp_path / "page.png"), full_page=True)
        browser.close()
    runs = httpx.get(f"{server}/api/runs", headers={"Authorization": "Bearer web-token"}).json()
    assert [(r["status"], r["max_steps"], r["preset"]) for r in runs] == [("queued", 5, "lora-cpu")]


def test_page_exports_shows_verification_and_deploys(trained_dir: Path, tmp_path: Path) -> None:
    from conftest import clone_data_dir
    from playwright.sync_api import expect, sync_playwright

    data = tmp_path / "data"
    clone_data_dir(trained_dir, data)
    with api_server(data, "web-token") as base, sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=CHROMIUM,
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update"],
        )
        page = browser.new_page()
        page.goto(base + "/")
        page.fill("#token", "web-token")
        page.click("#login-form button")
        # The trained run's Q8_0 export is listed with its verification figures.
        q8_row = page.locator("#artifacts tr", has_text="q8_0")
        expect(q8_row).to_contain_text("ready")
        expect(q8_row).to_contain_text("top-1")
        # Queue an export of the fine-tune as q4_k_m: it appears, pending, with a progress bar.
        page.select_option("#export-source", label="run faq")
        page.select_option("#export-type", "q4_k_m")
        page.click("#export-form button")
        expect(page.locator("#export-result")).to_contain_text("pending")
        expect(page.locator("#artifacts tr", has_text="q4_k_m")).to_contain_text("pending")
        # Deploy the ready GGUF: a pending deployment shows up.
        q8_row.get_by_role("button", name="Deploy").click()
        expect(page.locator("#deploy-result")).to_contain_text("queued")
        expect(page.locator("#deployments")).to_contain_text("pending")
        page.click("#rollback-btn")
        expect(page.locator("#deploy-result")).to_contain_text("nothing to roll back to")
        page.screenshot(path=str(tmp_path / "artifacts.png"), full_page=True)
        browser.close()
        headers = {"Authorization": "Bearer web-token"}
        arts = httpx.get(f"{base}/api/artifacts", headers=headers).json()
        assert [a["status"] for a in arts if a["type"] == "q4_k_m"] == ["pending"]
        deps = httpx.get(f"{base}/api/deployments", headers=headers).json()
        assert [d["status"] for d in deps] == ["pending"]
