from __future__ import annotations

from fastapi import APIRouter, status
from pydantic import BaseModel, Field

from appliance.api.deps import AdminDep, RuntimeDep, SessionDep
from appliance.api.errors import responses
from appliance.api.schemas import DeploymentPublic
from appliance.jobs import deployments

router = APIRouter(prefix="/api/deployments", tags=["deployments"], dependencies=[AdminDep],
                   responses=responses(401, 422))


class DeployRequest(BaseModel):
    artifact_id: str | None = Field(None, description="A ready GGUF artifact")
    base_model_id: str | None = Field(None, description="Or a base model's own GGUF (e.g. the bundled model)")


@router.post("", response_model=DeploymentPublic, status_code=status.HTTP_202_ACCEPTED,
             summary="Deploy a GGUF; the inference server swaps to it within a second",
             responses=responses(400, 413, 507, notes={404: "No such artifact or base model",
                                                       422: "Not a ready GGUF artifact, or its file is missing"}))
def create(body: DeployRequest, runtime: RuntimeDep) -> DeploymentPublic:
    dep = deployments.request_deployment(engine=runtime.engine, paths=runtime.paths, artifact_id=body.artifact_id,
                                         base_model_id=body.base_model_id)
    return DeploymentPublic.of(dep)


@router.get("", response_model=list[DeploymentPublic], summary="Deployments, newest first")
def list_(session: SessionDep) -> list[DeploymentPublic]:
    return [DeploymentPublic.of(d) for d in deployments.list_deployments(session)]


@router.post("/rollback", response_model=DeploymentPublic, status_code=status.HTTP_202_ACCEPTED,
             summary="Deploy again the model that was active before the current one",
             responses=responses(404, 422, 507, notes={409: "Nothing to roll back to"}))
def rollback(runtime: RuntimeDep) -> DeploymentPublic:
    return DeploymentPublic.of(deployments.rollback(engine=runtime.engine, paths=runtime.paths))


@router.get("/{deployment_id}", response_model=DeploymentPublic, summary="One deployment",
            responses=responses(notes={404: "No such deployment"}))
def show(deployment_id: str, session: SessionDep) -> DeploymentPublic:
    return DeploymentPublic.of(deployments.get_deployment(session, deployment_id))
