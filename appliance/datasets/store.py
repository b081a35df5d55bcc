"""Reading and removing stored datasets."""

from __future__ import annotations

import json
from itertools import islice
from typing import Any

from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, select

from appliance.datasets.stats import pick_model, token_stats
from appliance.db import events
from appliance.db.engine import write_session
from appliance.db.tables import Dataset, DatasetTokenStats, Evaluation, Run
from appliance.errors import ConflictError, NotFoundError
from appliance.paths import Paths


def list_datasets(session: Session) -> list[Dataset]:
    return list(session.exec(select(Dataset).order_by(col(Dataset.created_at).desc())))


def get_dataset(session: Session, dataset_id: str) -> Dataset:
    dataset = session.get(Dataset, dataset_id)
    if dataset is None:
        raise NotFoundError(f"no dataset with id {dataset_id!r}")
    return dataset


def token_stats_by_dataset(session: Session) -> dict[str, list[DatasetTokenStats]]:
    """Every dataset's token stats in one query (listing all datasets reads no row twice)."""
    out: dict[str, list[DatasetTokenStats]] = {}
    for stats in session.exec(select(DatasetTokenStats).order_by(col(DatasetTokenStats.id))):
        out.setdefault(stats.dataset_id, []).append(stats)
    return out


def token_stats_of(session: Session, dataset_id: str) -> list[DatasetTokenStats]:
    query = select(DatasetTokenStats).where(DatasetTokenStats.dataset_id == dataset_id)
    return list(session.exec(query.order_by(col(DatasetTokenStats.id))))


def read_rows(paths: Paths, dataset: Dataset, limit: int | None = None) -> list[dict[str, Any]]:
    with open(paths.resolve(dataset.path), encoding="utf-8") as f:
        return [json.loads(line) for line in islice(f, limit)]


def stats_for(
    *, engine: Engine, paths: Paths, dataset_id: str, base_model_id: str | None, cutoff_len: int
) -> list[DatasetTokenStats]:
    """All recorded token stats of a dataset; the ones asked for are measured first if missing."""
    query = select(DatasetTokenStats).where(DatasetTokenStats.dataset_id == dataset_id)
    with Session(engine) as session:
        dataset = get_dataset(session, dataset_id)
        model = pick_model(session, base_model_id)
        have = list(session.exec(query))
    if model is None or any(s.base_model_id == model.id and s.cutoff_len == cutoff_len for s in have):
        return have
    conversations = [row["messages"] for row in read_rows(paths, dataset)]
    stats = token_stats(
        engine=engine, paths=paths, conversations=conversations, base_model_id=model.id, cutoff_len=cutoff_len
    )
    assert stats is not None
    try:
        with write_session(engine) as session:
            session.add(DatasetTokenStats(dataset_id=dataset_id, **stats))
    except IntegrityError:
        pass  # measured concurrently by another request: same numbers
    with Session(engine) as session:
        return list(session.exec(query))


def delete_dataset(*, engine: Engine, paths: Paths, dataset_id: str) -> None:
    """Refused (409) while any run trained on the dataset or any evaluation was made on it (naming them)."""
    with write_session(engine) as session:
        dataset = get_dataset(session, dataset_id)
        users = list(session.exec(select(Run.id).where(Run.dataset_id == dataset_id)))
        if users:
            raise ConflictError(f"dataset {dataset_id} is used by run(s) {', '.join(users)}; delete those first")
        evaluated = list(session.exec(select(Evaluation.id).where(Evaluation.dataset_id == dataset_id)))
        if evaluated:
            raise ConflictError(f"dataset {dataset_id} is the eval set of evaluation(s) {', '.join(evaluated)}; "
                                "delete those first (appliance evaluations rm ID, or DELETE /api/evaluations/ID)")
        file = paths.resolve(dataset.path)
        session.delete(dataset)  # its token stats go with it (ON DELETE CASCADE)
        events.record(
            session, kind="dataset.deleted", entity_type="dataset", entity_id=dataset_id,
            message=f"dataset {dataset.name} deleted",
        )
    # After the commit: a crash here leaves an unreferenced file, never a record without its file.
    file.unlink(missing_ok=True)
