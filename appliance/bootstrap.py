"""What every process does at start: data dir, migrations, secrets. Idempotent and fast."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy.engine import Engine

from appliance import fsutil
from appliance.db import migrate
from appliance.db.engine import make_engine
from appliance.paths import Paths
from appliance.settings import Settings


@dataclass(frozen=True)
class Runtime:
    settings: Settings
    paths: Paths
    engine: Engine
    admin_token: str
    kiosk_key: str


def secrets_for(settings: Settings, paths: Paths) -> tuple[str, str]:
    admin = settings.admin_token.get_secret_value() if settings.admin_token else None
    kiosk = settings.kiosk_key.get_secret_value() if settings.kiosk_key else None
    return (
        admin or fsutil.read_or_create_secret(paths.admin_token),
        kiosk or fsutil.read_or_create_secret(paths.kiosk_key),
    )


def bootstrap(settings: Settings, *, run_migrations: bool = True) -> Runtime:
    paths = Paths.from_data_dir(settings.data_dir)
    paths.ensure()
    if run_migrations:
        migrate.upgrade(paths)
    admin, kiosk = secrets_for(settings, paths)
    return Runtime(settings, paths, make_engine(paths), admin, kiosk)
