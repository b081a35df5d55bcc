"""`appliance deploy | rollback | undeploy` and `appliance deployments list`: what the kiosks are served."""

from __future__ import annotations

from typing import Annotated, Any

import typer
from sqlmodel import Session

from appliance.bootstrap import Runtime
from appliance.cli.common import checked, get_runtime, show

deployments_app = typer.Typer(help="What the inference server serves.", no_args_is_help=True)


def _deployment_public(runtime: Runtime, deployment_id: str) -> dict[str, Any]:
    from appliance.api.schemas import DeploymentPublic
    from appliance.jobs.deployments import get_deployment

    with Session(runtime.engine) as session:
        return DeploymentPublic.of(get_deployment(session, deployment_id)).model_dump(mode="json")


def _follow_deployment(runtime: Runtime, deployment_id: str, wait: bool) -> None:
    import time

    info = _deployment_public(runtime, deployment_id)
    said = ""
    while wait and info["status"] in ("gating", "pending"):
        if info["status"] == "gating" and not said:
            said = "waiting for the deployment gate's evaluations (appliance evaluations list)"
            typer.echo(said, err=True)
        time.sleep(0.5)
        info = _deployment_public(runtime, deployment_id)
    show(info)
    if info["status"] == "failed":
        raise typer.Exit(1)


def deploy(
    artifact: Annotated[str | None, typer.Argument(help="A ready GGUF (or GGUF adapter) artifact's id")] = None,
    base: Annotated[str | None, typer.Option(help="Serve a base model's own GGUF instead")] = None,
    force: Annotated[bool, typer.Option(help="Deploy without the deployment gate (recorded in the event log)")] = False,
    eval_dataset: Annotated[str | None, typer.Option(help="Eval set the gate compares on (default: the newest "
                                                     "dataset added with --purpose eval)")] = None,
    wait: Annotated[bool, typer.Option(help="Wait until the inference server has swapped (or refused)")] = True,
    name: Annotated[str | None, typer.Option(help="Serve it under this name beside the site's default "
                                             "(kiosks send it as `model`)")] = None,
) -> None:
    """Deploy a GGUF to the kiosks, through the deployment gate: with an eval set, the model is evaluated
    beside the one serving now and refused when it answers worse. The inference server loads it beside
    the old one, smoke-tests it and switches without a failed request."""
    import getpass

    from appliance.api.routers.playground import PLAYGROUND
    from appliance.jobs import gate

    if name == PLAYGROUND:
        raise typer.BadParameter(f"{PLAYGROUND!r} is reserved for the console Playground's comparisons",
                                 param_hint="--name")
    runtime = get_runtime()
    dep = checked(lambda: gate.request(engine=runtime.engine, paths=runtime.paths,
                                        margins=runtime.settings.gate_margins, artifact_id=artifact,
                                        base_model_id=base, eval_dataset_id=eval_dataset, force=force,
                                        who=f"{getpass.getuser()} (CLI)", channel=name))
    _follow_deployment(runtime, dep.id, wait)


def rollback(wait: Annotated[bool, typer.Option(help="Wait until it is served")] = True,
             name: Annotated[str | None, typer.Option(help="Roll back this named deployment")] = None) -> None:
    """Serve again the model that was active before the current one (of the default, or of `--name`)."""
    from appliance.jobs.deployments import rollback as do_rollback

    runtime = get_runtime()
    dep = checked(lambda: do_rollback(engine=runtime.engine, paths=runtime.paths, channel=name))
    _follow_deployment(runtime, dep.id, wait)


def undeploy(name: Annotated[str, typer.Argument(help="The deployment's name (what kiosks send as `model`)")]) -> None:
    """Stop serving a named deployment; requests in flight on it end first."""
    import getpass

    from appliance.jobs.deployments import undeploy as do_undeploy

    runtime = get_runtime()
    dep = checked(lambda: do_undeploy(engine=runtime.engine, channel=name, who=f"{getpass.getuser()} (CLI)"))
    typer.echo(f"{name}: {dep.id} {dep.status}; the inference server stops serving it within a second")


@deployments_app.command("list")
def deployments_list() -> None:
    """Deployments, newest first."""
    from appliance.jobs.deployments import list_deployments

    runtime = get_runtime()
    with Session(runtime.engine) as session:
        listed = list_deployments(session)
        for d in listed:
            detail = d.error or (f"{d.strategy}, gap {d.gap_ms:.0f} ms" if d.strategy else "")
            typer.echo(f"{d.id}  {d.status:<8} {d.name or '-':<40} {detail}")
    if not listed:
        typer.echo("no deployments yet: the kiosks get the bundled model (appliance deploy ARTIFACT)", err=True)
