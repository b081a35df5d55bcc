"""Files the appliance ships beside its code: the database migrations and the run presets.

In a source checkout they are `migrations/` and `configs/presets/` at the repository root. An
installed wheel (the Docker image, the air-gapped tarball's `install.sh --native`) carries them as
data files under `<sys.prefix>/share/appliance/` (pyproject.toml's `tool.setuptools.data-files`).
"""

from __future__ import annotations

import sys
from pathlib import Path

_CHECKOUT = Path(__file__).resolve().parents[1]
_INSTALLED = Path(sys.prefix) / "share" / "appliance"


def _first(*candidates: Path) -> Path:
    for path in candidates:
        if path.is_dir():
            return path
    found = ", ".join(map(str, candidates))
    raise FileNotFoundError(f"none of {found} exists: the appliance is installed incompletely")


def migrations_dir() -> Path:
    """Alembic's script folder (env.py, versions/)."""
    return _first(_CHECKOUT / "migrations", _INSTALLED / "migrations")


def presets_dir() -> Path:
    """The run presets (`*.yaml`, LLaMA-Factory keys)."""
    return _first(_CHECKOUT / "configs" / "presets", _INSTALLED / "presets")


def llama_cpp_converter_dir() -> Path:
    """llama.cpp's convert_hf_to_gguf.py with its conversion/ and gguf-py/ (appliance/export/converter.py)."""
    return _first(_CHECKOUT / "vendor" / "llama.cpp", _INSTALLED / "llama.cpp")
