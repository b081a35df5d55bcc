"""The append-only event log: what happened, to what, when."""

from __future__ import annotations

import json
from typing import Any

from sqlmodel import Session, col, select

from appliance.db.tables import Event


def record(
    session: Session, *, kind: str, entity_type: str, entity_id: str, message: str, data: Any = None
) -> Event:
    event = Event(
        kind=kind,
        entity_type=entity_type,
        entity_id=entity_id,
        message=message,
        data_json=json.dumps(data) if data is not None else None,
    )
    session.add(event)
    return event


def recent(session: Session, *, limit: int = 100, entity_id: str | None = None) -> list[Event]:
    query = select(Event).order_by(col(Event.id).desc()).limit(limit)
    if entity_id is not None:
        query = query.where(Event.entity_id == entity_id)
    return list(session.exec(query))
