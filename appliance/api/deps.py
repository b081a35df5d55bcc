"""Dependencies shared by the routers. The runtime lives on app.state, created by the factory."""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections.abc import Iterator
from typing import Annotated
from urllib.parse import urlsplit

from fastapi import Depends, HTTPException, Request, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlmodel import Session

from appliance.bootstrap import Runtime

bearer = HTTPBearer(auto_error=False, description="The admin token (APPLIANCE_ADMIN_TOKEN or secrets/admin_token).")


def get_runtime(request: Request) -> Runtime:
    runtime: Runtime = request.app.state.runtime
    return runtime


RuntimeDep = Annotated[Runtime, Depends(get_runtime)]


def get_session(runtime: RuntimeDep) -> Iterator[Session]:
    with Session(runtime.engine) as session:
        yield session


SessionDep = Annotated[Session, Depends(get_session)]


SESSION_COOKIE = "appliance_session"
CSRF_HEADER = "X-Appliance-Console"  # a custom header: a cross-site form or image cannot send it
SAFE_METHODS = ("GET", "HEAD", "OPTIONS")


SESSION_S = 12 * 3600  # a console session lasts a working day; then the token is asked again


def _sign(admin_token: str, expires: int) -> str:
    return hmac.new(admin_token.encode(), f"appliance console session {expires}".encode(), hashlib.sha256).hexdigest()


def session_value(admin_token: str, now: float | None = None) -> str:
    """What the console's cookie holds: its expiry and a signature keyed by the admin token, never the
    token itself (it cannot be replayed as a Bearer token). Stateless: a copied cookie stops working at
    its expiry, and rotating the token signs every browser out at once."""
    expires = int((time.time() if now is None else now) + SESSION_S)
    return f"{expires}.{_sign(admin_token, expires)}"


def _cookie_ok(request: Request, runtime: Runtime) -> bool:
    expires, _, signature = request.cookies.get(SESSION_COOKIE, "").partition(".")
    if not expires.isdigit() or int(expires) < time.time():
        return False
    return secrets.compare_digest(signature.encode(), _sign(runtime.admin_token, int(expires)).encode())


def _check_csrf(request: Request) -> None:
    """A cookie goes with every request to this host, also one a foreign page makes the browser send;
    writes authenticated by the cookie alone must prove they come from the console: the custom header
    (which no cross-site form can set, and fetch only after a CORS preflight this app never grants)
    and, when the browser names one, an Origin equal to this host."""
    if request.method in SAFE_METHODS:
        return
    origin = request.headers.get("origin")
    host = request.headers.get("host", "")
    if request.headers.get(CSRF_HEADER) != "1" or (origin is not None and urlsplit(origin).netloc != host):
        raise HTTPException(status.HTTP_403_FORBIDDEN, f"cross-site request refused: the console sends {CSRF_HEADER}")


def require_admin(
    request: Request, runtime: RuntimeDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
) -> None:
    if credentials is None and _cookie_ok(request, runtime):
        _check_csrf(request)
        return
    if credentials is None or credentials.scheme.lower() != "bearer":
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            "missing admin token: send 'Authorization: Bearer <token>'",
            headers={"WWW-Authenticate": "Bearer"},
        )
    if not secrets.compare_digest(credentials.credentials.encode(), runtime.admin_token.encode()):
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, "invalid admin token", headers={"WWW-Authenticate": "Bearer"})


AdminDep = Depends(require_admin)
