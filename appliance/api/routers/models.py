from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, status
from pydantic import BaseModel, Field

from appliance.api.deps import AdminDep, RuntimeDep, SessionDep
from appliance.api.errors import responses
from appliance.api.schemas import ArtifactPublic, ModelPublic
from appliance.models.adapters import import_adapter
from appliance.models.registry import get_model, list_models

router = APIRouter(prefix="/api/models", tags=["models"], dependencies=[AdminDep], responses=responses(401, 422))


@router.get("", response_model=list[ModelPublic], summary="List base models")
def list_(session: SessionDep) -> list[ModelPublic]:
    return [ModelPublic.of(m) for m in list_models(session)]


@router.get("/{model_id}", response_model=ModelPublic, summary="One base model",
            responses=responses(notes={404: "No such model"}))
def show(model_id: str, session: SessionDep) -> ModelPublic:
    return ModelPublic.of(get_model(session, model_id))


class AdapterImport(BaseModel):
    path: str = Field(description="A PEFT LoRA folder on the appliance (adapter_config.json, "
                                  "adapter_model.safetensors), e.g. LLaMA-Factory's or Unsloth's output")
    name: str | None = Field(None, description="Display name; default: the folder's name")


@router.post("/{model_id}/adapters", response_model=ArtifactPublic, status_code=status.HTTP_201_CREATED,
             summary="Import a LoRA adapter trained elsewhere for this base model",
             responses=responses(400, 413, 507, notes={404: "No such model",
                                        422: "Not a PEFT LoRA folder, or it does not match the base "
                                             "(target modules, shapes, rank)"}))
def import_adapter_(model_id: str, body: AdapterImport, runtime: RuntimeDep) -> ArtifactPublic:
    art = import_adapter(engine=runtime.engine, paths=runtime.paths, source=Path(body.path), base_model_id=model_id,
                         name=body.name)
    return ArtifactPublic.of(art)
