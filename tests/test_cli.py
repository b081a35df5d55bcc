"""The `appliance` command, as a user runs it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from samples import ALPACA, jsonl


def appliance(data_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "APPLIANCE_DATA_DIR": str(data_dir)}
    return subprocess.run(
        [sys.executable, "-m", "appliance.cli", *args], env=env, capture_output=True, text=True, timeout=120
    )


def test_datasets_add_list_show_rm(data_dir: Path, tmp_path: Path) -> None:
    file = tmp_path / "faq.jsonl"
    file.write_bytes(jsonl(ALPACA))
    added = appliance(data_dir, "datasets", "add", str(file), "--name", "FAQ", "--cutoff-len", "48")
    assert added.returncode == 0, added.stderr
    ds = json.loads(added.stdout)
    assert (ds["name"], ds["rows"], ds["format"]) == ("FAQ", 3, "alpaca")
    assert ds["token_stats"][0]["over_cutoff"] == 2
    listed = appliance(data_dir, "datasets", "list").stdout
    assert ds["id"] in listed and "3 rows" in listed
    shown = appliance(data_dir, "datasets", "show", ds["id"], "--rows", "1")
    assert json.loads(shown.stdout.split("\n}\n")[1])["messages"][0]["content"] == "What are the opening hours?"
    assert appliance(data_dir, "datasets", "rm", ds["id"]).returncode == 0
    assert ds["id"] not in appliance(data_dir, "datasets", "list").stdout


def test_bad_dataset_names_file_line_and_field(data_dir: Path, tmp_path: Path) -> None:
    file = tmp_path / "bad.jsonl"
    file.write_text('{"instruction": "a", "output": "b"}\n{"instruction": "c", "output": ""}\n')
    res = appliance(data_dir, "datasets", "add", str(file))
    assert res.returncode == 1
    assert "bad.jsonl: line 2, field output: empty assistant response" in res.stderr
    assert appliance(data_dir, "datasets", "list").stdout == ""


def test_models_list_and_token(data_dir: Path) -> None:
    models = json.loads(appliance(data_dir, "models", "list").stdout)
    assert [m["id"] for m in models] == ["smollm2-135m-instruct"]
    token = appliance(data_dir, "token").stdout.strip()
    assert token == (data_dir / "secrets" / "admin_token").read_text().strip()


def test_migrate_command(tmp_path: Path) -> None:
    res = appliance(tmp_path / "fresh", "migrate")
    assert res.returncode == 0 and "at revision 0009" in res.stdout
    down = appliance(tmp_path / "fresh", "migrate", "--down", "--revision", "base")
    assert down.returncode == 0 and "at revision None" in down.stdout


def test_artifacts_export_and_deploy_commands(trained_dir: Path, tmp_path: Path) -> None:
    from conftest import clone_data_dir

    data = tmp_path / "data"
    clone_data_dir(trained_dir, data)
    listed = appliance(data, "artifacts", "list").stdout
    line = next(x for x in listed.splitlines() if " gguf " in x)
    art_id = line.split()[0]
    assert "q8_0" in line and "ready" in line
    shown = json.loads(appliance(data, "artifacts", "show", art_id).stdout)
    assert shown["verification"]["positions"] > 0 and shown["modelfile"] is True
    out = tmp_path / "out"
    out.mkdir()
    got = appliance(data, "artifacts", "download", art_id, "-o", str(out))
    assert got.returncode == 0, got.stderr
    assert (out / shown["file"]).stat().st_size == shown["size"] and (out / "Modelfile").is_file()
    bad = appliance(data, "export", shown["run_id"], "--type", "q9_9", "--no-wait")
    assert bad.returncode == 1 and "unknown GGUF type 'q9_9'" in bad.stderr
    again = appliance(data, "export", shown["run_id"], "--type", "q8_0", "--no-wait")
    assert again.returncode == 0 and json.loads(again.stdout)["id"] == art_id  # already exported: the same one
    dep = appliance(data, "deploy", art_id, "--no-wait")
    assert dep.returncode == 0, dep.stderr
    assert json.loads(dep.stdout)["status"] == "pending"
    assert "pending" in appliance(data, "deployments", "list").stdout
    underway = appliance(data, "rollback", "--no-wait")  # the deployment is still pending (no server)
    assert underway.returncode == 1 and f"deployment {json.loads(dep.stdout)['id']} is pending" in underway.stderr
