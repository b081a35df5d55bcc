"""Which exporter writes a family's GGUF, llama.cpp's converter as shipped (vendor/llama.cpp, the source
llama-cpp-python 0.3.36 is built from), and the refusals: an architecture neither knows, a missing
converter, a converter that fails. The converter's successful exports are in tests/test_families.py
(Gemma 3, Phi-4-mini, SmolLM3: verified against torch)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from appliance.export.converter import convert, converter_architectures, converter_dir, exporter_for
from appliance.export.gguf_hf import ARCHITECTURES, ExportError
from appliance.models.families import FAMILIES
from appliance.resources import llama_cpp_converter_dir


def _folder(tmp_path: Path, arch: str) -> Path:
    folder = tmp_path / arch
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"architectures": [arch], "model_type": "x"}))
    return folder


def test_the_family_table_names_the_exporter_that_knows_each_family() -> None:
    known = converter_architectures()
    for family in FAMILIES:
        for arch in family.architectures:
            assert arch in known  # llama.cpp could export every family, should our writer lose one
            assert (arch in ARCHITECTURES) == (family.exporter == "writer"), arch


def test_shipped_converter_is_the_pinned_llama_cpp(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("APPLIANCE_LLAMA_CPP_CONVERTER", raising=False)
    folder = converter_dir()
    assert folder == llama_cpp_converter_dir()
    assert "llama-cpp-python 0.3.36" in (folder / "SOURCE").read_text()
    assert (folder / "gguf-py" / "gguf" / "constants.py").is_file()  # its own gguf-py, not the installed one


def test_exporter_choice_and_refusal_when_neither_knows_the_architecture(tmp_path: Path) -> None:
    assert exporter_for(_folder(tmp_path, "Gemma3ForCausalLM")) == "llama.cpp"
    assert exporter_for(_folder(tmp_path, "Phi3ForCausalLM")) == "llama.cpp"
    with pytest.raises(ExportError, match="'BogusForCausalLM' is not supported.*Qwen3ForCausalLM.*llama.cpp's conv"):
        exporter_for(_folder(tmp_path, "BogusForCausalLM"))
    with pytest.raises(ExportError, match="no safetensors|no \\*.safetensors"):
        exporter_for(_folder(tmp_path, "Qwen2ForCausalLM"))  # the writer's own checks still apply


def test_a_configured_converter_folder_without_the_script_is_refused(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("APPLIANCE_LLAMA_CPP_CONVERTER", str(tmp_path))
    with pytest.raises(ExportError, match="no convert_hf_to_gguf.py"):
        convert(_folder(tmp_path, "Gemma3ForCausalLM"), tmp_path / "out.gguf", "f16", name="x")


def test_a_failing_conversion_says_why_and_leaves_no_file(tmp_path: Path) -> None:
    out = tmp_path / "out.gguf"
    with pytest.raises(ExportError, match="llama.cpp's converter failed on Gemma3ForCausalLM"):
        convert(_folder(tmp_path, "Gemma3ForCausalLM"), out, "f16", name="broken", chat_template="{{ x }}")
    assert not out.exists() and not list(tmp_path.glob(".*"))
    with pytest.raises(ExportError, match="not 'q4_k_m'"):
        convert(tmp_path, out, "q4_k_m", name="x")
