"""Token statistics of a dataset, measured with a base model's own tokenizer and chat template."""

from __future__ import annotations

import statistics
from functools import lru_cache
from pathlib import Path
from typing import Any

from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from appliance.datasets.shapes import Message
from appliance.db.tables import ModelRecord
from appliance.errors import InputProblem, InvalidInputError
from appliance.models.chat import ChatTokenizer
from appliance.models.registry import BUNDLED_ID
from appliance.paths import Paths


@lru_cache(maxsize=4)
def _tokenizer(hf_dir: str, _mtime: float) -> ChatTokenizer:
    return ChatTokenizer(Path(hf_dir))


def chat_tokenizer(paths: Paths, model: ModelRecord) -> ChatTokenizer:
    if model.hf_path is None:
        raise InvalidInputError("base_model_id", [InputProblem(None, "base_model_id", f"{model.id} has no tokenizer")])
    hf_dir = paths.resolve(model.hf_path)
    return _tokenizer(str(hf_dir), (hf_dir / "tokenizer.json").stat().st_mtime)


def pick_model(session: Session, base_model_id: str | None) -> ModelRecord | None:
    """The named model, else the bundled one, else the first registered; None if there is none."""
    if base_model_id is not None:
        model = session.get(ModelRecord, base_model_id)
        if model is None:
            raise InvalidInputError(
                "request", [InputProblem(None, "base_model_id", f"no base model with id {base_model_id!r}")]
            )
        return model
    return session.get(ModelRecord, BUNDLED_ID) or session.exec(select(ModelRecord)).first()


def summarize(counts: list[int], cutoff_len: int) -> dict[str, Any]:
    return {
        "cutoff_len": cutoff_len,
        "min_tokens": min(counts),
        "median_tokens": float(statistics.median(counts)),
        "max_tokens": max(counts),
        "total_tokens": sum(counts),
        "over_cutoff": sum(1 for n in counts if n > cutoff_len),
    }


def token_stats(
    *,
    engine: Engine,
    paths: Paths,
    conversations: list[list[Message]],
    base_model_id: str | None,
    cutoff_len: int,
) -> dict[str, Any] | None:
    """Stats as DatasetTokenStats fields (without dataset_id); None when no model is registered."""
    with Session(engine) as session:
        model = pick_model(session, base_model_id)
    if model is None:
        return None
    counts = chat_tokenizer(paths, model).count_tokens(conversations)
    return {"base_model_id": model.id, **summarize(counts, cutoff_len)}
