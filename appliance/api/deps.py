"""Dependencies shared by the routers. The runtime lives on app.state, created by the factory."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from typing import Annotated

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


def require_admin(
    runtime: RuntimeDep, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]
) -> None:
    if credentials is None or credentials.scheme.lower() != "bearer":
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            "missing admin token: send 'Authorization: Bearer <token>'",
            headers={"WWW-Authenticate": "Bearer"},
        )
    if not secrets.compare_digest(credentials.credentials.encode(), runtime.admin_token.encode()):
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, "invalid admin token", headers={"WWW-Authenticate": "Bearer"})


AdminDep = Depends(require_admin)
