"""Every string of the console and the kiosk page comes from a catalogue per language: the
catalogues have the same keys, every key the pages name exists, and the markup holds no text."""

from __future__ import annotations

import json
import re
from html.parser import HTMLParser
from pathlib import Path

WEB = Path(__file__).resolve().parent.parent / "appliance" / "web"
# Keys built at run time from API values (statuses, metrics, verdicts, gate outcomes, export types).
DYNAMIC = ("status.", "metric.", "verdict.", "gate.", "models.type_", "runs.key_", "datasets.purpose_")


def catalogue(path: Path) -> dict[str, str]:
    return dict(json.loads(path.read_text()))


def test_catalogues_have_the_same_keys_and_no_empty_string() -> None:
    for folder, names in ((WEB / "i18n", ("en", "zh")), (WEB / "kiosk", ("en", "zh"))):
        en, zh = (catalogue(folder / f"{n}.json") for n in names)
        assert en.keys() == zh.keys(), set(en) ^ set(zh)
        assert all(v.strip() for v in [*en.values(), *zh.values()])
        assert en != zh


def test_every_key_the_console_names_is_in_the_catalogue() -> None:
    en = catalogue(WEB / "i18n" / "en.json")
    sources = [p.read_text() for p in [WEB / "index.html", *WEB.glob("js/**/*.js")]]
    named = {k for s in sources for k in re.findall(r"\"([a-z]+\.[a-z_0-9]+)\"", s)
             if not k.endswith((".js", ".json", ".css", ".png"))}
    assert named - en.keys() == set()
    for prefix in DYNAMIC:
        assert any(k.startswith(prefix) for k in en), prefix
    for status in ("queued", "running", "succeeded", "failed", "cancelled", "pending", "ready", "active", "gating"):
        assert f"status.{status}" in en


class TextOf(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.stack: list[str] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.stack.append(tag)

    def handle_endtag(self, tag: str) -> None:
        if self.stack:
            self.stack.pop()

    def handle_data(self, data: str) -> None:
        if data.strip() and self.stack and self.stack[-1] not in ("option", "title", "script", "style"):
            self.text.append(data.strip())


def test_markup_holds_no_text() -> None:
    for page in (WEB / "index.html", WEB / "kiosk" / "index.html"):
        parser = TextOf()
        parser.feed(page.read_text())
        assert parser.text == [], (page.name, parser.text)
