"""Settings: every field documented, environment variables honoured, secrets generated once, 0600."""

from __future__ import annotations

import stat
import subprocess
import sys
from pathlib import Path

from appliance.bootstrap import bootstrap
from appliance.settings import Settings


def test_every_setting_is_documented() -> None:
    undocumented = [name for name, f in Settings.model_fields.items() if not (f.description or "").strip()]
    assert undocumented == []


def test_environment_variables_use_the_appliance_prefix(monkeypatch, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("APPLIANCE_DATA_DIR", str(tmp_path / "d"))
    monkeypatch.setenv("APPLIANCE_API_PORT", "9001")
    monkeypatch.setenv("APPLIANCE_INFERENCE_PORT", "9002")
    monkeypatch.setenv("APPLIANCE_ADMIN_TOKEN", "from-env")
    s = Settings()
    assert (s.data_dir, s.api_port, s.inference_port, s.host) == (tmp_path / "d", 9001, 9002, "127.0.0.1")
    assert s.admin_token is not None and s.admin_token.get_secret_value() == "from-env"


def test_tokens_are_generated_once_with_mode_0600(tmp_path: Path) -> None:
    first = bootstrap(Settings(data_dir=tmp_path / "data"))
    second = bootstrap(Settings(data_dir=tmp_path / "data"))
    assert first.admin_token == second.admin_token and len(first.admin_token) >= 32
    assert first.kiosk_key == second.kiosk_key and first.kiosk_key != first.admin_token
    for path in (first.paths.admin_token, first.paths.kiosk_key):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(first.paths.secrets.stat().st_mode) == 0o700
    first.engine.dispose()
    second.engine.dispose()


def test_config_command_prints_settings_with_secrets_masked(tmp_path: Path) -> None:
    env = {"APPLIANCE_DATA_DIR": str(tmp_path / "d"), "APPLIANCE_ADMIN_TOKEN": "s3cret-value", "PATH": ""}
    out = subprocess.run(
        [sys.executable, "-m", "appliance.cli", "config"], env=env, capture_output=True, text=True, check=True
    ).stdout
    assert "s3cret-value" not in out
    assert "APPLIANCE_ADMIN_TOKEN=********" in out
    assert "APPLIANCE_KIOSK_KEY=(generated)" in out
    assert f"APPLIANCE_DATA_DIR={tmp_path / 'd'}" in out
    for name in Settings.model_fields:
        assert f"APPLIANCE_{name.upper()}=" in out
