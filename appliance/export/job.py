"""The export child: `python -m appliance.export SPEC.json`. Like the trainer child, it speaks JSON
lines on stdout (progress, done, error) and writes only inside its work folder; the worker moves
the files into `artifacts/` and records them once the child has said `done`.

The spec and the messages are appliance/child_protocol.py's ExportSpec and ExportMessage.
"""

from __future__ import annotations

import os
import resource
import signal
import sys
import time
from pathlib import Path
from typing import Any

from appliance.child_protocol import ExportDone, ExportSpec, Failed, Progress, emit, read_spec
from appliance.errors import ApplianceError
from appliance.fsutil import describe_no_space
from appliance.serving import ServingGate


class Reporter:
    """Progress over the whole job: stages have fixed shares of the bar. Each report is also a point
    between two steps (stages, tensors) where the export waits while kiosks are answered."""

    def __init__(self, stages: list[tuple[str, float]], gate: ServingGate) -> None:
        self.stages, self.gate = stages, gate
        self.last = 0.0

    def __call__(self, stage: str, fraction: float, detail: str = "") -> None:
        self.gate.wait()
        start = 0.0
        for name, share in self.stages:
            if name == stage:
                value = start + share * min(max(fraction, 0.0), 1.0)
                now = time.monotonic()
                if fraction >= 1.0 or now - self.last > 0.5:
                    self.last = now
                    emit(Progress(stage=stage, progress=min(round(value, 4), 1.0), detail=detail))
                return
            start += share


def _limit_file_size() -> None:
    # Fault injection for tests: a file-size limit makes writes fail like a full disk does.
    limit = os.environ.get("APPLIANCE_FAULT_EXPORT_MAX_FILE_BYTES")
    if limit:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (int(limit), int(limit)))


def run(spec: ExportSpec) -> dict[str, Any]:
    """The export's files, written into spec.work_dir -> ExportDone's fields."""
    from appliance.export import merge, verify
    from appliance.export.adapter import write_adapter_gguf
    from appliance.export.converter import convert, exporter_for
    from appliance.export.gguf_write import DIRECT_TYPES, write_gguf
    from appliance.export.modelfile import render_modelfile
    from appliance.export.quantize import quantize

    work, base_hf, adapter = spec.work_dir, spec.base_hf_dir, spec.adapter_dir
    kind, out_type, name = spec.kind, spec.type, spec.name
    result: dict[str, Any] = {"files": []}
    gate = ServingGate.from_spec(spec.serving)

    if kind == "gguf-adapter":
        assert adapter is not None
        report = Reporter([("write", 0.1), ("merge", 0.3), ("verify", 0.6)], gate)
        out = work / f"{name}.lora.{out_type}.gguf"
        result["summary"] = write_adapter_gguf(adapter, base_hf, out, name=name, out_type=out_type)
        report("write", 1.0)
        model = merge.merge(base_hf, adapter)
        report("merge", 0.5)
        base_f16 = work / "verify-base.f16.gguf"  # the adapter is checked on an exact base
        write_gguf(base_hf, base_f16, "f16", name=name + " base")
        report("merge", 1.0)
        ids = verify.prompt_tokens(base_hf)
        figures = verify.compare(verify.torch_logits(model, ids), verify.gguf_logits(base_f16, ids, lora_path=out))
        base_f16.unlink()
        figures["checked_on"] = "an f16 GGUF of the base model with this adapter applied (lora_path)"
        report("verify", 1.0)
        result.update(main=out.name, files=[out.name], verification=figures,
                      failure=verify.verdict("f16", figures))
        return result

    direct = out_type in DIRECT_TYPES
    report = Reporter([("merge", 0.25), ("write", 0.35 if direct else 0.2), ("quantize", 0.0 if direct else 0.15),
                       ("verify", 0.4)], gate)
    merged_dir = spec.merged_dir
    template = spec.chat_template  # the run's recorded template; None: the folder's own
    if adapter is not None and merged_dir is None:
        model = merge.merge(base_hf, adapter)
        src = work / "merged"
        merge.save_merged(model, base_hf, src, chat_template=template)
        result["merged"] = "merged"
    else:
        src = merged_dir or base_hf
        model = merge.load_base(src)
    report("merge", 1.0)
    out = work / f"{name}.{out_type}.gguf"
    target = out if direct else work / f"{name}.f16-intermediate.gguf"
    # The family's serving defaults (Qwen3: no reasoning preamble) go into the GGUF's template itself.
    template = _served_template(src, template)
    exporter = exporter_for(src)
    if exporter == "writer":
        write_gguf(src, target, out_type if direct else "f16", name=name, chat_template=template,
                   progress=lambda f, t: report("write", f, t))
    else:
        convert(src, target, out_type if direct else "f16", name=name, chat_template=template)
        report("write", 1.0, "llama.cpp convert_hf_to_gguf.py")
    if not direct:
        quantize(target, out, out_type)
        target.unlink()
        report("quantize", 1.0)
    ids = verify.prompt_tokens(src)
    figures = verify.compare(verify.torch_logits(model, ids), verify.gguf_logits(out, ids))
    figures["exporter"] = exporter  # "writer" (the appliance's) or "llama.cpp" (convert_hf_to_gguf.py)
    report("verify", 1.0)
    print(f"waited {gate.paused_s:.1f} s between steps for kiosk requests", file=sys.stderr, flush=True)
    (work / "Modelfile").write_text(render_modelfile(out.name, src, chat_template=template))
    result.update(main=out.name, files=[out.name, "Modelfile"], verification=figures,
                  failure=verify.verdict(out_type, figures))
    return result


def _served_template(src: Path, template: str | None) -> str | None:
    from appliance.export.converter import hf_architecture
    from appliance.models.families import serving_template
    from appliance.models.inspect import read_chat_template

    text = template if template is not None else read_chat_template(src)
    return serving_template(text, hf_architecture(src)) if text is not None else None


def describe(exc: BaseException, work_dir: Path) -> str:
    full = describe_no_space(exc, work_dir)  # the worker removes the work folder: nothing is kept
    if full is not None:
        return full
    if isinstance(exc, ApplianceError):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"


def main(argv: list[str]) -> int:
    try:
        spec = read_spec(Path(argv[0]), ExportSpec)
    except (OSError, ValueError) as exc:  # pydantic's ValidationError is a ValueError naming every bad key
        emit(Failed(message=f"the export spec {argv[0]} cannot be read: {exc}"))
        return 2
    _limit_file_size()
    try:
        result = run(spec)
    except BaseException as exc:  # noqa: BLE001  (any failure must reach the worker as a message)
        import traceback

        traceback.print_exc(file=sys.stderr)
        emit(Failed(message=describe(exc, spec.work_dir)))
        return 1
    if result.get("failure"):
        emit(Failed(message=result["failure"], verification=result.get("verification")))
        return 1
    emit(ExportDone.model_validate(result))
    return 0
