from __future__ import annotations

from fastapi import APIRouter

from appliance import __version__
from appliance.api.schemas import Health

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=Health, summary="Liveness (no token needed)")
def healthz() -> Health:
    return Health(status="ok", version=__version__)
