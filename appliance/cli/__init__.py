"""The `appliance` command: up | api | worker | inference | migrate | config | health | token | models |
datasets | runs | export | artifacts | deploy | rollback | undeploy | deployments | eval | compare |
evaluations. Each group of commands is a module of this package; this one puts them together."""

from __future__ import annotations

import typer

from appliance.cli import artifacts, datasets, deployments, evaluations, models, runs, services

app = typer.Typer(help="The appliance: fine-tune small language models where the data lives.", no_args_is_help=True)
for command in (services.up, services.inference, services.worker, services.api, services.migrate, services.config,
                services.health, services.token):
    app.command()(command)
app.add_typer(models.models_app, name="models")
app.add_typer(datasets.datasets_app, name="datasets")
app.add_typer(runs.runs_app, name="runs")
app.command("export")(artifacts.export_cmd)
app.add_typer(artifacts.artifacts_app, name="artifacts")
app.command()(deployments.deploy)
app.command()(deployments.rollback)
app.command()(deployments.undeploy)
app.add_typer(deployments.deployments_app, name="deployments")
app.command("eval")(evaluations.evaluate)
app.command("compare")(evaluations.compare)
app.add_typer(evaluations.evaluations_app, name="evaluations")


def main() -> None:
    app()
