"""The machine as the console's System page shows it, and the kiosk address and key to hand out."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from pydantic import BaseModel, Field

from appliance.api import sysinfo
from appliance.api.deps import AdminDep, RuntimeDep
from appliance.api.errors import responses

router = APIRouter(prefix="/api/system", tags=["system"], dependencies=[AdminDep], responses=responses(401, 422))


class SystemPublic(BaseModel):
    cpu_percent: float | None = Field(description="Busy share of all cores, percent (sampled over 0.25 s)")
    cpu_count: int
    memory: dict[str, int] | None = Field(description="total_bytes, used_bytes (total minus available)")
    disk: dict[str, int] = Field(description="The data directory's filesystem: total_bytes, used_bytes")
    gpus: list[dict[str, Any]] = Field(description="Per NVIDIA GPU (nvidia-smi): name, percent, used/total bytes")
    versions: dict[str, str]
    data_dir: str
    kiosk_url: str = Field(description="What kiosks open (the kiosk page on the inference port)")
    kiosk_key: str = Field(description="The key kiosks send; the kiosk page takes it from #key=... in its URL")
    kiosk_title: str
    kiosk_welcome: str
    kiosk_idle_reset_s: float


def kiosk_url(runtime: Any, request: Request) -> str:
    if runtime.settings.kiosk_url:
        return str(runtime.settings.kiosk_url)
    host = request.url.hostname or "127.0.0.1"
    host = f"[{host}]" if ":" in host else host
    return f"http://{host}:{runtime.settings.inference_port}/"


@router.get("", response_model=SystemPublic, summary="CPU, memory, disk and GPU use; versions; the kiosk address")
def system(runtime: RuntimeDep, request: Request) -> SystemPublic:
    import os

    s = runtime.settings
    return SystemPublic(
        cpu_percent=sysinfo.cpu_percent(), cpu_count=os.cpu_count() or 1, memory=sysinfo.memory(),
        disk=sysinfo.disk(runtime.paths.root), gpus=sysinfo.gpus(), versions=sysinfo.versions(),
        data_dir=str(runtime.paths.root), kiosk_url=kiosk_url(runtime, request), kiosk_key=runtime.kiosk_key,
        kiosk_title=s.kiosk_title, kiosk_welcome=s.kiosk_welcome, kiosk_idle_reset_s=s.kiosk_idle_reset_s,
    )
