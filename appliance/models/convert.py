"""Child process: turn a GGUF file into a full-precision Hugging Face folder for training.

    python -m appliance.models.convert MODEL.gguf OUT_DIR

Runs torch + transformers, so it never runs inside the API process. Prints one JSON line per
stage on stdout for the parent's progress display.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path


def _stage(name: str, **extra: object) -> None:
    print(json.dumps({"stage": name, "t": round(time.monotonic(), 3), **extra}), flush=True)


def convert(gguf_path: Path, out: Path) -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    _stage("import")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    _stage("tokenizer")
    tokenizer = AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
    _stage("weights")
    model = AutoModelForCausalLM.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
    # A model loaded from GGUF carries a quantization config that save_pretrained would write
    # and training would trip on; the weights are already dequantized to fp32.
    quantizer = getattr(model, "hf_quantizer", None)
    if quantizer is not None:
        quantizer.remove_quantization_config(model)
    _stage("save")
    model.save_pretrained(str(out), safe_serialization=True)
    tokenizer.save_pretrained(str(out))
    _stage("done")


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: python -m appliance.models.convert MODEL.gguf OUT_DIR", file=sys.stderr)
        return 2
    convert(Path(argv[0]), Path(argv[1]))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
