"""llama.cpp's own converter (`convert_hf_to_gguf.py`) for families the appliance's writer does not cover
(Gemma 3, Phi-3 / Phi-4-mini, SmolLM3, ...), and the choice between the two.

The converter ships with the appliance: `vendor/llama.cpp/` holds `convert_hf_to_gguf.py`, its
`conversion/` package and its own `gguf-py` copied from the llama.cpp source llama-cpp-python 0.3.36 is
built from (vendor/llama.cpp/SOURCE; `make vendor-llama-convert` copies them again), so converter and
runtime agree on every architecture and tensor name. An installed wheel carries them under
`<prefix>/share/appliance/llama.cpp/`; APPLIANCE_LLAMA_CPP_CONVERTER names another folder.

It runs in its own process (a child of the export child), offline: its `gguf-py` differs from the
installed `gguf` package, so it cannot share an interpreter with the writer. Types it writes directly:
f32, f16, bf16, q8_0; the export job quantizes others from its f16.

Errors: ExportError (422) when neither exporter knows the architecture (naming both lists), when the
converter folder is missing, or when the converter fails (with the last lines it printed).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Literal

from appliance.export.gguf_hf import ARCHITECTURES, ExportError, open_hf
from appliance.resources import llama_cpp_converter_dir

CONVERTER_TYPES = ("f32", "f16", "bf16", "q8_0")
TEMPLATE_FILES = ("tokenizer_config.json", "chat_template.jinja", "chat_template.json")


def converter_dir() -> Path:
    """The folder holding convert_hf_to_gguf.py; ExportError when there is none."""
    configured = os.environ.get("APPLIANCE_LLAMA_CPP_CONVERTER")
    try:
        folder = Path(configured) if configured else llama_cpp_converter_dir()
    except FileNotFoundError as exc:
        raise ExportError(f"llama.cpp's converter is not installed: {exc}") from exc
    if not (folder / "convert_hf_to_gguf.py").is_file():
        raise ExportError(f"{folder}: no convert_hf_to_gguf.py (APPLIANCE_LLAMA_CPP_CONVERTER)")
    return folder


def converter_architectures(folder: Path | None = None) -> set[str]:
    """HF architecture names the shipped converter registers, read from its source (no import: it needs torch)."""
    root = folder or converter_dir()
    names: set[str] = set()
    for file in sorted((root / "conversion").glob("*.py")):
        text = file.read_text(encoding="utf-8")
        for args in re.findall(r"@ModelBase\.register\(([^)]*)\)", text):
            names.update(re.findall(r"\"([A-Za-z0-9_]+)\"", args))
        names.update(re.findall(r"^\s+\"([A-Za-z0-9_]+For[A-Za-z0-9_]+|[A-Za-z0-9_]+Model)\": \"", text, re.M))
    return names


def hf_architecture(hf_dir: Path) -> str:
    config = hf_dir / "config.json"
    if not config.is_file():
        raise ExportError(f"{hf_dir}: no config.json; not a Hugging Face model folder")
    return str((json.loads(config.read_text()).get("architectures") or ["?"])[0])


def exporter_for(hf_dir: Path) -> Literal["writer", "llama.cpp"]:
    """'writer' where the appliance's own writer covers the architecture, else 'llama.cpp' where the shipped
    converter does; ExportError naming both lists when neither does."""
    arch = hf_architecture(hf_dir)
    if arch in ARCHITECTURES:
        open_hf(hf_dir)  # its weights and tokenizer are there
        return "writer"
    known = converter_architectures()
    if arch in known:
        return "llama.cpp"
    raise ExportError(
        f"architecture {arch!r} is not supported by the GGUF exporter (its own writer: "
        f"{', '.join(sorted(ARCHITECTURES))}; nor by llama.cpp's converter, which knows {len(known)} others)"
    )


def _with_template(src: Path, work: Path, template: str) -> Path:
    """A folder of links to `src` whose chat template is `template` (no copy of the weights)."""
    work.mkdir(parents=True)
    for f in src.iterdir():
        if f.is_file() and f.name not in TEMPLATE_FILES:
            (work / f.name).symlink_to(f.resolve())
    config_file = src / "tokenizer_config.json"
    config = json.loads(config_file.read_text()) if config_file.is_file() else {}
    config["chat_template"] = template
    (work / "tokenizer_config.json").write_text(json.dumps(config, indent=2, ensure_ascii=False))
    (work / "chat_template.jinja").write_text(template)
    return work


def convert(hf_dir: Path, out: Path, out_type: str, *, name: str, chat_template: str | None = None,
            timeout_s: float = 3600) -> dict[str, object]:
    """Write `hf_dir` as a GGUF of `out_type` (CONVERTER_TYPES) at `out` with llama.cpp's converter; the
    GGUF's chat template is `chat_template` when given. Returns a summary like write_gguf's."""
    if out_type not in CONVERTER_TYPES:
        raise ExportError(f"llama.cpp's converter writes {', '.join(CONVERTER_TYPES)}, not {out_type!r}")
    folder = converter_dir()
    src = hf_dir
    links = out.parent / f".{out.name}.src"
    if chat_template is not None:
        src = _with_template(hf_dir, links, chat_template)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "NO_LOCAL_GGUF")}
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TQDM_DISABLE="1")
    cmd = [sys.executable, str(folder / "convert_hf_to_gguf.py"), str(src), "--outfile", str(out),
           "--outtype", out_type, "--model-name", name]
    try:
        proc = subprocess.run(cmd, env=env, cwd=str(folder), capture_output=True, text=True, timeout=timeout_s)
    finally:
        shutil.rmtree(links, ignore_errors=True)
    if proc.returncode != 0 or not out.is_file():
        out.unlink(missing_ok=True)
        tail = "\n".join(proc.stderr.strip().splitlines()[-6:])
        raise ExportError(f"llama.cpp's converter failed on {hf_architecture(hf_dir)}:\n{tail}")
    return {"architecture": hf_architecture(hf_dir), "type": out_type, "exporter": "llama.cpp"}
