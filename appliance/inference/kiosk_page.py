"""The kiosk page: `GET /` on the inference port, a full-screen touch chat for customers.

A static page (appliance/web/kiosk/) that talks only to `/v1/chat/completions` with the kiosk key
(typed once by staff, or carried in the URL fragment `#key=...` of the console's QR code: a fragment
never reaches a server log). It holds no admin function: this port has none to reach. Its title,
welcome text and idle reset come from settings through `/kiosk/config.json` (no secret in it)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import APIRouter, HTTPException
from fastapi.responses import FileResponse

from appliance.settings import Settings

KIOSK_DIR = Path(__file__).resolve().parent.parent / "web" / "kiosk"
HEADERS = {
    # img-src data:: the page's empty icon (<link rel="icon" href="data:,">), no request for /favicon.ico
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; "
                               "frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-cache",
}
MEDIA = {".html": "text/html", ".js": "text/javascript", ".css": "text/css", ".json": "application/json"}


def kiosk_router(settings: Settings) -> APIRouter:
    router = APIRouter(include_in_schema=False)

    @router.get("/")
    def page() -> FileResponse:
        return FileResponse(KIOSK_DIR / "index.html", media_type="text/html", headers=HEADERS)

    @router.get("/kiosk/config.json")
    def config() -> dict[str, Any]:
        s = settings
        return {"title": s.kiosk_title, "welcome": s.kiosk_welcome, "idle_reset_s": s.kiosk_idle_reset_s}

    @router.get("/kiosk/{name}")
    def asset(name: str) -> FileResponse:
        path = KIOSK_DIR / name
        # One flat folder: a name with a separator or a dot-dot never leaves it.
        if "/" in name or name.startswith(".") or path.suffix not in MEDIA or not path.is_file():
            raise HTTPException(404, "not found")
        return FileResponse(path, media_type=MEDIA[path.suffix], headers=HEADERS)

    return router
