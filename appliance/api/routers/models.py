from __future__ import annotations

from fastapi import APIRouter

from appliance.api.deps import AdminDep, SessionDep
from appliance.api.errors import responses
from appliance.api.schemas import ModelPublic
from appliance.models.registry import get_model, list_models

router = APIRouter(prefix="/api/models", tags=["models"], dependencies=[AdminDep], responses=responses(401, 422))


@router.get("", response_model=list[ModelPublic], summary="List base models")
def list_(session: SessionDep) -> list[ModelPublic]:
    return [ModelPublic.of(m) for m in list_models(session)]


@router.get("/{model_id}", response_model=ModelPublic, summary="One base model",
            responses=responses(notes={404: "No such model"}))
def show(model_id: str, session: SessionDep) -> ModelPublic:
    return ModelPublic.of(get_model(session, model_id))
