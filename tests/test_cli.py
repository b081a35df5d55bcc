"""The `appliance` command, as a user runs it."""

from __future__ import annotations

import json
import os
import re
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
    # A folder not made yet, written as a folder (a trailing slash): made, not taken for a file name.
    new_dir = tmp_path / "new" / "dir"
    got = appliance(data, "artifacts", "download", art_id, "-o", f"{new_dir}/")
    assert got.returncode == 0, got.stderr
    assert (new_dir / shown["file"]).stat().st_size == shown["size"] and (new_dir / "Modelfile").is_file()
    # The run's LoRA adapter comes out as the folder peft loads, not its weights alone.
    adapter = next(x.split()[0] for x in listed.splitlines() if " adapter " in x)
    got = appliance(data, "artifacts", "download", adapter, "-o", str(tmp_path / "lora"))
    assert got.returncode == 0, got.stderr
    assert {"adapter_config.json", "adapter_model.safetensors"} <= {f.name for f in (tmp_path / "lora").iterdir()}
    mixup = appliance(data, "artifacts", "download", adapter, "-o", str(out / shown["file"]))
    assert mixup.returncode == 2 and "is a file" in mixup.stderr
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


def test_mistakes_on_the_command_line_are_errors_not_tracebacks(data_dir: Path, tmp_path: Path) -> None:
    faq = tmp_path / "faq.jsonl"
    faq.write_bytes(jsonl(ALPACA))
    ds = json.loads(appliance(data_dir, "datasets", "add", str(faq)).stdout)["id"]
    bad_yaml = tmp_path / "bad.yaml"
    bad_yaml.write_text("max_steps: [1\n")
    cases = [
        (["runs", "create", "--dataset", ds, "--config", str(tmp_path / "none.yaml")], 2, "does not exist"),
        (["runs", "create", "--dataset", ds, "--config", str(bad_yaml)], 2, "is not valid YAML"),
        (["runs", "create", "--dataset", ds, "--set", "max_steps"], 2, "write KEY=VALUE"),
        (["runs", "create", "--dataset", ds, "--set", "max_steps=-3"], 1, "max_steps: -3"),
        (["runs", "watch", "run_nope"], 1, "no run with id 'run_nope'"),
        (["runs", "logs", "run_nope"], 1, "no run with id 'run_nope'"),
        (["datasets", "show", ds, "--rows", "-1"], 2, "--rows"),
        (["datasets", "add", str(faq), "--cutoff-len", "-5"], 2, "--cutoff-len"),
    ]
    for args, code, said in cases:
        res = appliance(data_dir, *args)
        assert (res.returncode, "Traceback" in res.stderr) == (code, False), (args, res.stderr)
        told = " ".join(re.sub(r"[│╭╮╰╯─]", " ", res.stderr).split())  # typer's box, wrapped at 80 columns
        assert said in told, (args, res.stderr)
    assert appliance(data_dir, "runs", "list").stdout == ""  # nothing was queued
    # The same content added again as an eval set says what became of it.
    again = appliance(data_dir, "datasets", "add", str(faq), "--purpose", "eval")
    assert again.returncode == 0 and f"already stored as {ds}" in again.stderr and "now an eval set" in again.stderr
    assert " eval " in appliance(data_dir, "datasets", "list").stdout
