"""A GGUF file checked before llama.cpp opens it: llama.cpp can abort the process on a malformed one.
Beside the GGUF writer (gguf_write.py); the value types are `gguf`'s own enums."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def check_gguf(path: Path) -> int:
    """Refuse a file llama.cpp could crash on: not GGUF, a header that does not parse, or tensors
    past the end of the file. A minimal header walk (gguf.GGUFReader takes seconds on a 49k-token
    vocabulary, and would slow the model serving beside it during a swap)."""
    import mmap
    import struct

    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, GGUFValueType

    if not path.is_file():
        raise FileNotFoundError(f"{path.name} is missing")
    size = path.stat().st_size
    with path.open("rb") as fh:
        if fh.read(4) != b"GGUF":
            raise ValueError(f"{path.name} is not a GGUF file")
        buf = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
    try:
        pos = 4
        t = GGUFValueType
        scalar: dict[int, int] = {t.UINT8: 1, t.INT8: 1, t.UINT16: 2, t.INT16: 2, t.UINT32: 4, t.INT32: 4,
                                  t.FLOAT32: 4, t.BOOL: 1, t.UINT64: 8, t.INT64: 8, t.FLOAT64: 8}

        def take(fmt: str) -> Any:
            nonlocal pos
            value = struct.unpack_from("<" + fmt, buf, pos)
            pos += struct.calcsize(fmt)
            return value[0]

        def skip_value(vtype: int) -> Any:
            nonlocal pos
            if vtype == t.STRING:
                n = take("Q")
                text = buf[pos:pos + n]
                pos += n
                return bytes(text)
            if vtype == t.ARRAY:
                item, count = take("I"), take("Q")
                if item in scalar:
                    pos += scalar[item] * count
                elif item == t.STRING:  # vocabularies: ~10^5 strings, so the tightest loop
                    from_bytes = int.from_bytes
                    longest = 0
                    for _ in range(count):
                        n = from_bytes(buf[pos:pos + 8], "little")
                        pos += 8 + n
                        if n > longest:
                            longest = n
                    if pos > size:
                        raise ValueError("string array past the end of the file")
                    return longest
                else:
                    for _ in range(count):
                        skip_value(item)
                return None
            if vtype not in scalar:
                raise ValueError(f"unknown value type {vtype}")
            value = buf[pos:pos + scalar[vtype]]
            pos += scalar[vtype]
            return bytes(value)

        take("I")  # version
        n_tensors, n_kv = take("Q"), take("Q")
        alignment, longest_token = 32, 0
        for _ in range(n_kv):
            key = skip_value(t.STRING)
            value = skip_value(take("I"))
            if key == b"general.alignment" and value is not None:
                alignment = int.from_bytes(value, "little")
            if key == b"tokenizer.ggml.tokens" and isinstance(value, int):
                longest_token = value
        tensors = []
        for _ in range(n_tensors):
            name = skip_value(t.STRING)
            dims = [take("Q") for _ in range(take("I"))]
            ttype, offset = take("I"), take("Q")
            block, type_size = GGML_QUANT_SIZES[GGMLQuantizationType(ttype)]
            n = 1
            for d in dims:
                n *= d
            tensors.append((name, offset, n // block * type_size))
        data_start = (pos + alignment - 1) // alignment * alignment
    except (struct.error, ValueError, KeyError, IndexError) as exc:
        raise ValueError(f"{path.name} is corrupt or truncated (header: {exc})") from exc
    finally:
        buf.close()
    for name, offset, nbytes in tensors:
        if data_start + offset + nbytes > size:
            raise ValueError(f"{path.name} is corrupt or truncated (tensor {name.decode(errors='replace')} "
                             f"ends past the end of the file)")
    return longest_token
