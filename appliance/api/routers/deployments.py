from __future__ import annotations

from fastapi import APIRouter, Request, status
from pydantic import BaseModel, Field

from appliance.api.deps import AdminDep, RuntimeDep, SessionDep
from appliance.api.errors import responses
from appliance.api.routers.playground import PLAYGROUND
from appliance.api.schemas import DeploymentPublic
from appliance.jobs import deployments, gate
from appliance.jobs.common import bad_request

router = APIRouter(prefix="/api/deployments", tags=["deployments"], dependencies=[AdminDep],
                   responses=responses(401, 422))


class DeployRequest(BaseModel):
    artifact_id: str | None = Field(None, description="A ready GGUF artifact, or GGUF adapter (served on its base "
                                    "GGUF, which every adapter of that base shares)")
    base_model_id: str | None = Field(None, description="Or a base model's own GGUF (e.g. the bundled model)")
    name: str | None = Field(None, description="Serve it under this name, beside the site's default: kiosks ask "
                             "for it with `model` (a new deployment with the same name replaces it); none: "
                             f"the site's default deployment. {PLAYGROUND!r} is reserved for the Playground's "
                             "comparisons (POST /api/playground/compare)")
    force: bool = Field(False, description="Deploy without the deployment gate (recorded, with who and when)")
    eval_dataset_id: str | None = Field(None, description="The eval set the gate compares on; default: the newest "
                                        "dataset uploaded with purpose=eval")


@router.post("", response_model=DeploymentPublic, status_code=status.HTTP_202_ACCEPTED,
             summary="Deploy a GGUF through the deployment gate; the inference server swaps to it within a second",
             responses=responses(400, 413, 507, notes={
                 404: "No such artifact, base model or eval dataset",
                 409: "Refused by the deployment gate: `detail` names the worse metrics (force: true deploys anyway)",
                 422: "Not a ready GGUF artifact, or its file is missing"}))
def create(body: DeployRequest, runtime: RuntimeDep, request: Request) -> DeploymentPublic:
    """With an eval set (a dataset uploaded with purpose=eval), the candidate and the model serving now
    are evaluated on it (reusing earlier evaluations): 409 when the candidate is worse beyond the
    margins; `gating` while the evaluations run (then `pending`, or `failed` with the reason)."""
    if body.name == PLAYGROUND:
        raise bad_request("name", f"name {PLAYGROUND!r} is reserved for the Playground's comparisons "
                          "(POST /api/playground/compare)")
    who = f"admin token from {request.client.host if request.client else 'unknown'}"
    dep = gate.request(engine=runtime.engine, paths=runtime.paths, margins=runtime.settings.gate_margins,
                       artifact_id=body.artifact_id, base_model_id=body.base_model_id,
                       eval_dataset_id=body.eval_dataset_id, force=body.force, who=who, channel=body.name)
    return DeploymentPublic.of(dep)


@router.get("", response_model=list[DeploymentPublic], summary="Deployments, newest first")
def list_(session: SessionDep) -> list[DeploymentPublic]:
    return [DeploymentPublic.of(d) for d in deployments.list_deployments(session)]


@router.post("/rollback", response_model=DeploymentPublic, status_code=status.HTTP_202_ACCEPTED,
             summary="Deploy again the model that was active before the current one",
             responses=responses(404, 422, 507, notes={
                 409: "Nothing to roll back to, or a deployment is still gating or pending"}))
def rollback(runtime: RuntimeDep, name: str | None = None) -> DeploymentPublic:
    """`name`: roll back that named deployment; none: the site's default."""
    return DeploymentPublic.of(deployments.rollback(engine=runtime.engine, paths=runtime.paths, channel=name))


@router.post("/undeploy", response_model=DeploymentPublic,
             summary="Stop serving a named deployment (kiosks asking for the name then get 404)",
             responses=responses(notes={404: "Nothing is served under that name",
                                        409: "The site's default deployment (deploy another or roll back), or a "
                                             "deployment of the name is still gating"}))
def undeploy(name: str, runtime: RuntimeDep, request: Request) -> DeploymentPublic:
    """The name's active deployment is retired; requests in flight on it end first. With LoRA adapter
    deployments, the adapter is unloaded and the shared base stays for the others."""
    who = f"admin token from {request.client.host if request.client else 'unknown'}"
    return DeploymentPublic.of(deployments.undeploy(engine=runtime.engine, channel=name, who=who))


@router.get("/{deployment_id}", response_model=DeploymentPublic, summary="One deployment",
            responses=responses(notes={404: "No such deployment"}))
def show(deployment_id: str, session: SessionDep) -> DeploymentPublic:
    return DeploymentPublic.of(deployments.get_deployment(session, deployment_id))
