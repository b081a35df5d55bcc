"""The console's sign-in: the admin token is checked once and exchanged for an HttpOnly,
SameSite=Strict cookie, so page scripts never hold the token (nothing in localStorage for an
injected script to read). API clients keep sending `Authorization: Bearer`."""

from __future__ import annotations

import secrets

from fastapi import APIRouter, HTTPException, Request, Response, status
from pydantic import BaseModel, Field

from appliance.api.deps import SESSION_COOKIE, SESSION_S, AdminDep, RuntimeDep, session_value
from appliance.api.errors import responses

router = APIRouter(prefix="/console/session", tags=["console"])


class SignIn(BaseModel):
    token: str = Field(description="The admin token")


@router.post("", status_code=status.HTTP_204_NO_CONTENT, summary="Sign the browser in (sets the session cookie)",
             responses=responses(400, 422, notes={401: "Wrong token"}))
def sign_in(body: SignIn, runtime: RuntimeDep, request: Request) -> Response:
    if not secrets.compare_digest(body.token.strip().encode(), runtime.admin_token.encode()):
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, "invalid admin token")
    response = Response(status_code=status.HTTP_204_NO_CONTENT)
    response.set_cookie(SESSION_COOKIE, session_value(runtime.admin_token), httponly=True, samesite="strict",
                        secure=request.url.scheme == "https", path="/", max_age=SESSION_S)
    return response


@router.get("", status_code=status.HTTP_204_NO_CONTENT, dependencies=[AdminDep],
            summary="Whether this browser is signed in (204) or not (401)", responses=responses(401))
def check() -> Response:
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.delete("", status_code=status.HTTP_204_NO_CONTENT, summary="Sign the browser out (clears the cookie)")
def sign_out() -> Response:
    response = Response(status_code=status.HTTP_204_NO_CONTENT)
    response.delete_cookie(SESSION_COOKIE, path="/", httponly=True, samesite="strict")
    return response
