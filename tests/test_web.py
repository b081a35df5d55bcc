"""The console and the kiosk page in a real browser (Debian's Chromium driven by Playwright) against
the appliance's three processes on 127.0.0.1, the whole loop as a person does it: sign in, upload
(a bad file shows its line), mark an eval set, start a run and watch its loss arrive live, export,
evaluate and compare, deploy through the gate, chat in the playground, hand the kiosk its key, and
switch to Chinese. Every request the browser makes is recorded: none may leave the appliance."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import clone_data_dir
from test_inference import KEY
from web_harness import (
    ARTIFACTS,
    LONG,
    TOKEN,
    Appliance,
    api,
    appliance,
    axe_violations,
    chromium,
    drop_file,
    focus_order,
    kiosk,
    screenshot,
)

EVAL_ROWS = [{"instruction": f"Where can I find the {p}?",
              "output": f"The {p} is on floor {i % 4 + 1}, room {100 + i}."}
             for i, p in enumerate(["pharmacy", "lab", "x-ray room"])]
BAD = '{"instruction": "a", "output": "b"}\n{"instruction": "c", "output": ""}\n'


@pytest.fixture(autouse=True)
def has_chromium() -> None:
    # Never a skip: a browser test that prints SKIPPED and passes tells nothing. `make test` installs
    # Chromium when run as root (see the Makefile); otherwise this says what to run.
    if not Path("/usr/bin/chromium").exists():
        pytest.fail("the web-page tests drive Debian's Chromium (/usr/bin/chromium), which is not installed: run "
                    "`sudo apt-get install chromium` (or `make test` as root, which installs it)", pytrace=False)


@pytest.fixture
def box(trained_dir: Path, tmp_path: Path) -> Iterator[Appliance]:
    data = tmp_path / "data"
    clone_data_dir(trained_dir, data)
    with appliance(data) as running:
        yield running


def test_the_whole_loop_in_the_browser(box: Appliance, tmp_path: Path) -> None:
    from playwright.sync_api import expect

    with chromium(box) as (context, requests):
        page = context.new_page()
        page.set_default_timeout(60_000)
        sign_in(page, box)
        datasets(page, tmp_path)
        run_id = runs(page, box)
        models(page, box)
        evaluations(page, box)
        deploy(page, box)
        playground(page)
        system(page)
        chinese(page)
        kiosk(context.new_page(), box)
        page.click("#sign-out")
        expect(page.locator("#token")).to_be_visible()
        assert page.evaluate("fetch('/api/datasets').then((r) => r.status)") == 401  # the cookie is gone
        assert requests.urls and not requests.foreign(), requests.foreign()
    assert api(box, f"/api/runs/{run_id}")["status"] == "cancelled"


def sign_in(page: Any, box: Appliance) -> None:
    from playwright.sync_api import expect

    page.goto(box.api + "/")
    expect(page.locator("#token")).to_be_focused()
    assert focus_order(page, 1) == ["sign-in-form-submit"]
    assert axe_violations(page) == []
    screenshot(page, "sign-in")
    page.fill("#token", "wrong")
    page.press("#token", "Enter")
    expect(page.locator("#sign-in-error")).to_contain_text("refused")
    page.fill("#token", TOKEN)
    page.press("#token", "Enter")
    expect(page.locator('[data-page="datasets"]')).to_be_visible()
    cookies = {c["name"]: c for c in page.context.cookies()}
    assert cookies["appliance_session"]["httpOnly"] and cookies["appliance_session"]["sameSite"] == "Strict"
    assert page.evaluate("Object.keys(localStorage)") == ["lang"]  # no token in the page's storage


def datasets(page: Any, tmp_path: Path) -> None:
    from playwright.sync_api import expect

    bad = tmp_path / "broken.jsonl"
    bad.write_text(BAD)
    page.set_input_files("#ds-file", str(bad))
    expect(page.locator("#upload-result")).to_contain_text("broken.jsonl · line 2 · output")
    drop_file(page, "faq-eval.jsonl", "".join(json.dumps(r) + "\n" for r in EVAL_ROWS))
    expect(page.locator("#upload-result")).to_contain_text("3 rows")
    expect(page.locator("#hist-summary")).to_contain_text("0 rows longer than the cutoff of 1024")
    expect(page.locator("#preview .turn.user").first).to_contain_text("Where can I find the pharmacy?")
    page.get_by_role("button", name="Mark as eval set").click()
    expect(page.locator("#ds-list tr", has_text="faq-eval.jsonl")).to_contain_text("eval set")
    assert axe_violations(page) == []
    screenshot(page, "datasets")


def runs(page: Any, box: Appliance) -> str:
    from playwright.sync_api import expect

    page.click('[data-nav="runs"]')
    expect(page.locator("#estimate")).to_contain_text("Fits")
    page.fill("#run-max_steps", "40")
    expect(page.locator("#estimate")).to_contain_text("40 steps")
    page.fill("#run-name", "live")
    page.get_by_role("button", name="Start run").dblclick()  # one run, not two (the list below has 2 runs)
    # The run's page: loss points drawn as the worker's trainer reports them over Server-Sent Events.
    expect(page.locator("#chart-loss .uplot")).to_have_attribute("data-points", re.compile(r"^([3-9]|\d\d+)$"),
                                                                  timeout=LONG)
    expect(page.locator("#run-status")).to_contain_text("running")
    screenshot(page, "run")
    run_id = page.url.rsplit("/", 1)[-1]
    page.get_by_role("button", name="Cancel").click()
    expect(page.locator("#run-status")).to_contain_text("cancelled", timeout=LONG)
    # Retried, the page follows it live again (it stayed at "queued" when the cancel had closed its stream).
    page.get_by_role("button", name="Retry").click()
    expect(page.locator("#run-status")).to_contain_text("running", timeout=LONG)
    page.get_by_role("button", name="Cancel").click()
    expect(page.locator("#run-status")).to_contain_text("cancelled", timeout=LONG)
    expect(page.get_by_role("button", name="Retry")).to_be_visible()
    page.click('[data-nav="runs"]')
    expect(page.locator(f'#run-list tr[data-id="{run_id}"] progress')).to_be_visible()
    picks = page.get_by_role("checkbox")
    expect(picks).to_have_count(2)
    picks.nth(0).check()
    picks.nth(1).check()
    page.get_by_role("button", name="Overlay the selected runs").click()
    expect(page.locator("#overlay-chart .uplot")).to_be_visible()
    screenshot(page, "runs")
    return run_id


def models(page: Any, box: Appliance) -> None:
    from playwright.sync_api import expect

    page.click('[data-nav="models"]')
    expect(page.locator('#artifacts tr[data-type="q8_0"]')).to_contain_text("top-1")
    page.select_option("#export-source", label="run faq")
    page.select_option("#export-type", "q4_0")
    page.get_by_role("button", name="Export", exact=True).click()
    expect(page.locator("#export-result")).to_contain_text("Export")
    row = page.locator('#artifacts tr[data-type="q4_0"]')
    expect(row).to_have_attribute("data-status", "ready", timeout=LONG)
    expect(row.get_by_role("link", name="Download")).to_be_visible()
    with page.expect_download() as download:
        row.get_by_role("link", name="Download").click()
    assert download.value.suggested_filename.endswith(".gguf")
    screenshot(page, "models")


def evaluations(page: Any, box: Appliance) -> None:
    from playwright.sync_api import expect

    q8 = next(a for a in api(box, "/api/artifacts?kind=gguf") if a["type"] == "q8_0")
    page.click('[data-nav="evaluations"]')
    # Queued, then stopped from its row: it ends failed, saying who cancelled it.
    page.select_option("#eval-model", "model:smollm2-135m-instruct")
    page.get_by_role("button", name="Evaluate").click()
    expect(page.locator("#eval-result")).to_contain_text("queued")
    page.locator("#eval-list tr", has_text="smollm2-135m-instruct").get_by_role("button", name="Cancel").click()
    expect(page.locator('#eval-list tr[data-status="failed"]')).to_contain_text("cancelled by admin token")
    for model in ("model:smollm2-135m-instruct", f"artifact:{q8['id']}"):
        page.select_option("#eval-model", model)
        page.get_by_role("button", name="Evaluate").click()
        expect(page.locator("#eval-result")).to_contain_text("queued")
    expect(page.locator('#eval-list tr[data-status="succeeded"]')).to_have_count(2, timeout=LONG)
    page.get_by_role("button", name="Compare", exact=True).click()
    expect(page.locator("#compare-result")).to_contain_text("ROUGE-L")
    expect(page.locator("#compare-result")).to_contain_text("Where can I find the pharmacy?")
    expect(page.locator("#compare-result")).to_contain_text("The pharmacy is on floor 1, room 100.")
    screenshot(page, "evaluations")


def deploy(page: Any, box: Appliance) -> None:
    from playwright.sync_api import expect

    q8 = next(a for a in api(box, "/api/artifacts?kind=gguf") if a["type"] == "q8_0")
    page.click('[data-nav="deploy"]')
    page.select_option("#deploy-model", f"artifact:{q8['id']}")
    page.get_by_role("button", name="Deploy", exact=True).click()
    # The gate compares the fine-tune with the model serving now on the eval set: passed, or refused
    # (409) with the worse metrics named, which a person may override (recorded as forced).
    expect(page.locator("#deploy-result")).to_contain_text(re.compile("Deployment dep_|refused"))
    if page.get_by_role("button", name="Deploy anyway").is_visible():
        page.get_by_role("button", name="Deploy anyway").click()
    expect(page.locator("#deployments tr").nth(1)).to_have_attribute("data-status", "active", timeout=LONG)
    expect(page.locator("#deployments")).to_contain_text(re.compile("passed|forced"))
    # The line under the form follows the deployment it announced (it stayed at "gating").
    expect(page.locator("#deploy-result")).to_contain_text(re.compile("active", re.I))
    # Back to the base model: worse than the fine-tune serving now on the eval set, so the gate refuses
    # it (409, the worse metrics named); deployed anyway (recorded), then rolled back.
    page.select_option("#deploy-model", "model:smollm2-135m-instruct")
    page.get_by_role("button", name="Deploy", exact=True).click()
    expect(page.locator("#deploy-result")).to_contain_text("refused by the deployment gate")
    page.get_by_role("button", name="Deploy anyway").click()
    latest = page.locator("#deployments tr").nth(1)
    expect(latest).to_contain_text("smollm2-135m-instruct")
    expect(latest).to_have_attribute("data-status", "active", timeout=LONG)
    expect(latest).to_contain_text("forced")
    expect(page.locator("#deployments tr").nth(2)).to_have_attribute("data-status", "retired")
    page.get_by_role("button", name="Roll back to the previous model").click()
    expect(page.locator("#deploy-result")).to_contain_text("Rolling back")
    expect(page.locator("#deployments tr")).to_have_count(4)  # the header and three deployments
    expect(latest).to_have_attribute("data-status", "active", timeout=LONG)
    # A named deployment beside the default (kiosks ask for it as `model`), then no longer served.
    page.select_option("#deploy-model", f"artifact:{q8['id']}")
    page.fill("#deploy-name", "ward-a")
    page.get_by_role("button", name="Deploy", exact=True).click()
    expect(page.locator("#deploy-result")).to_contain_text(re.compile("Deployment dep_|refused"))
    if page.get_by_role("button", name="Deploy anyway").is_visible():
        page.get_by_role("button", name="Deploy anyway").click()
    named = page.locator("#deployments tr").nth(1)
    expect(named).to_contain_text(f"ward-a: {q8['name']}")  # the name kiosks ask for, and the model it serves
    expect(named).to_have_attribute("data-status", "active", timeout=LONG)
    named.get_by_role("button", name="Stop serving").click()
    expect(page.locator("#deployments tr").nth(1)).to_have_attribute("data-status", "retired")
    expect(page.locator("#deployments tr").nth(2)).to_have_attribute("data-status", "active")  # the default
    (ARTIFACTS / "deployments.json").write_text(json.dumps(api(box, "/api/deployments"), indent=1))
    screenshot(page, "deploy")


def playground(page: Any) -> None:
    from playwright.sync_api import expect

    page.click('[data-nav="playground"]')
    expect(page.locator("#served")).to_contain_text("Serving")
    # The base model served beside the fine-tune the kiosks get, as "playground" (past the gate), then
    # one prompt to both: the two answers stream at the same time, one pane each.
    page.select_option("#compare-model", "model:smollm2-135m-instruct")
    page.get_by_role("button", name="Serve for comparison").click()
    expect(page.locator("#compare-status")).to_have_attribute("data-status", "active", timeout=LONG)
    page.select_option("#pane-1-model", "playground")
    page.fill("#prompt", "Where is the pharmacy?")
    page.get_by_role("button", name="Send").click()
    answers = [page.locator(f"#chat-log-{i} .turn.assistant").last for i in (0, 1)]
    for answer in answers:
        expect(answer).to_have_attribute("data-streaming", "false", timeout=LONG)
        assert int(answer.get_attribute("data-chunks") or 0) >= 2  # streamed in pieces, not at once
        assert answer.inner_text().strip()
    assert answers[1].get_attribute("data-model") == "playground"
    first, done = ([float(a.get_attribute(k) or "nan") for a in answers] for k in ("data-first-at", "data-done-at"))
    assert max(first) < min(done), (first, done)  # each began before the other ended: both streamed at once
    assert axe_violations(page) == []
    screenshot(page, "playground")


def system(page: Any) -> None:
    from playwright.sync_api import expect

    page.click('[data-nav="system"]')
    expect(page.locator("#kiosk-key")).to_have_value(KEY)
    expect(page.locator("#kiosk-qr")).to_be_visible()
    expect(page.locator("#usage")).to_contain_text("CPU")
    assert axe_violations(page) == []
    screenshot(page, "system")


def chinese(page: Any) -> None:
    from playwright.sync_api import expect

    page.select_option("#lang", "zh")
    expect(page.locator('[data-nav="datasets"]')).to_have_text("数据集")
    expect(page.locator("#usage")).to_contain_text("内存")
    expect(page.locator("html")).to_have_attribute("lang", "zh-CN")
    screenshot(page, "system-zh")
    page.select_option("#lang", "en")
    expect(page.locator('[data-nav="datasets"]')).to_have_text("Datasets")


def test_the_console_speaks_the_browsers_language(data_dir: Path) -> None:
    from conftest import api_server
    from playwright.sync_api import expect
    from web_harness import Appliance

    with api_server(data_dir, TOKEN) as base:
        box = Appliance(api=base, inference=base, data=data_dir)
        with chromium(box, lang="zh-CN") as (context, requests):
            page = context.new_page()
            page.goto(base + "/")
            expect(page.locator("#sign-in-form-submit")).to_have_text("登录")
            page.fill("#token", "wrong")
            page.press("#token", "Enter")
            expect(page.locator("#sign-in-error")).to_have_text("令牌无效。")
            assert axe_violations(page) == []
            page.fill("#token", TOKEN)
            page.press("#token", "Enter")
            expect(page.locator('[data-page="datasets"]')).to_contain_text("还没有数据集")  # the empty state
            for name in ("runs", "models", "evaluations", "deploy", "playground", "system"):
                page.click(f'[data-nav="{name}"]')
                expect(page.locator(f'[data-page="{name}"]')).to_be_visible()
                expect(page.locator(f'[data-page="{name}"] h2').first).to_be_visible()
            screenshot(page, "console-zh")
            assert not requests.foreign(), requests.foreign()
