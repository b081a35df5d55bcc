"""LLaMA-Factory's `dataset_info.json`: every key of an entry is honoured or refused by name.

The file maps a dataset name to {"file_name", "formatting", "columns", "tags", ...} (LLaMA-Factory's
data/README.md and `DatasetAttr` in src/llamafactory/data/parser.py; defaults as there). What the
appliance cannot do offline or cannot train is refused, naming the dataset and the key, never
ignored: a remote source (hub URLs, loading scripts, cloud files), preference or KTO data, tool
calling, images, video and audio. Every problem of the selected entries is listed at once.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Any

from appliance.datasets.fields import NO_TOOLS
from appliance.errors import InvalidInputError, Problems

INFO_FILE = "dataset_info.json"
MAX_NAME_CHARS = 200  # as for an upload's name (intake.MAX_NAME_CHARS)
FORMATTINGS = ("alpaca", "sharegpt", "openai")  # openai: sharegpt with role/content tags (LLaMA-Factory)
# Which columns each formatting reads, with LLaMA-Factory's defaults (None: not read unless named).
COLUMNS = {
    "alpaca": {"prompt": "instruction", "query": "input", "response": "output", "history": None, "system": None},
    "sharegpt": {"messages": "conversations", "system": None},
}
TAGS: dict[str, str | None] = {
    "role_tag": "from", "content_tag": "value", "user_tag": "human", "assistant_tag": "gpt",
    "observation_tag": "observation", "function_tag": "function_call", "system_tag": "system",
}
OPTIONAL_TAGS = ("observation_tag", "function_tag", "system_tag")  # null: no such role in the data
REMOTE = {
    "hf_hub_url": "loads the data from the Hugging Face hub",
    "ms_hub_url": "loads the data from the ModelScope hub",
    "om_hub_url": "loads the data from the Modelers hub",
    "cloud_file_name": "loads the data from cloud storage",
    "script_url": "runs a dataset loading script (Python code, which the appliance never runs)",
}
HUB_ONLY = {  # meaningful only for a hub dataset or a loading script; a local file has none
    "subset": "selects a subset (configuration) of a hub dataset",
    "folder": "selects a folder of a hub dataset repository",
    "revision": "selects a revision of a hub dataset",
}
UNTRAINABLE_COLUMNS = {
    "tools": NO_TOOLS,
    "images": "images cannot be trained here (the models read text only)",
    "videos": "video cannot be trained here (the models read text only)",
    "audios": "audio cannot be trained here (the models read text only)",
    "chosen": "preference data (chosen/rejected) cannot be trained here: the appliance trains supervised "
              "fine-tuning only",
    "rejected": "preference data (chosen/rejected) cannot be trained here: the appliance trains supervised "
                "fine-tuning only",
    "kto_tag": "KTO feedback cannot be trained here: the appliance trains supervised fine-tuning only",
}
KEYS = ("file_name", "formatting", "ranking", "split", "num_samples", "file_sha1", "columns", "tags",
        *REMOTE, *HUB_ONLY)


@dataclass(frozen=True)
class LfEntry:
    """One checked entry. `columns` maps LLaMA-Factory's column keys (prompt, query, response, history,
    system; or messages, system) to the file's column names, only those read; `tags` is complete."""

    name: str
    file_name: str
    formatting: str  # "alpaca" or "sharegpt" ("openai" is read as sharegpt)
    columns: dict[str, str]
    tags: dict[str, str | None] = field(default_factory=dict)
    num_samples: int | None = None
    file_sha1: str | None = None


def parse_info(info: Any, names: list[str] | None = None) -> list[LfEntry]:
    """The selected entries (all when `names` is None or empty), in the order asked or the file's.
    Raises InvalidInputError (source dataset_info.json) listing every problem, each with the key path
    `<dataset>.<key>` as its field."""
    problems = Problems(keep=50)
    if not isinstance(info, dict):
        problems.add(None, None, f"expected a JSON object mapping dataset names to entries, got {type(info).__name__}")
        raise InvalidInputError(INFO_FILE, problems.items, problems.total)
    wanted = names or list(info)
    for name in wanted:
        if name not in info:
            known = ", ".join(repr(n) for n in list(info)[:20])
            problems.add(None, name, f"no dataset {name!r} in {INFO_FILE}; it has {known or 'none'}")
    if not wanted:
        problems.add(None, None, "no datasets: the file is an empty object")
    entries = [_entry(name, info[name], problems) for name in wanted if name in info]
    if problems:
        raise InvalidInputError(INFO_FILE, problems.items, problems.total)
    return [e for e in entries if e is not None]


def _entry(name: str, raw: Any, problems: Problems) -> LfEntry | None:
    if not name.strip() or len(name) > MAX_NAME_CHARS:
        problems.add(None, name[:MAX_NAME_CHARS], f"a dataset name needs 1 to {MAX_NAME_CHARS} characters (it names "
                                                  f"the imported dataset), got {len(name.strip())}")
        return None
    if not isinstance(raw, dict):
        problems.add(None, name, f"expected an object (file_name, formatting, columns, ...), got {type(raw).__name__}")
        return None
    before = problems.total
    for key, value in raw.items():
        where = f"{name}.{key}"
        if key in REMOTE:
            problems.add(None, where, f"{key} {REMOTE[key]}, which this offline appliance cannot do: put the data "
                                      "file in the folder and name it with file_name instead")
        elif key in HUB_ONLY and value is not None:
            problems.add(None, where, f"{key} {HUB_ONLY[key]}; a local file has none: remove it")
        elif key not in KEYS:
            problems.add(None, where, f"unknown key {key!r}; accepted keys: {list(KEYS)}")
    formatting = raw.get("formatting", "alpaca")
    if formatting not in FORMATTINGS:
        problems.add(None, f"{name}.formatting", f"unknown formatting {formatting!r}; use one of {list(FORMATTINGS)} "
                                                 "(default alpaca)")
        formatting = "alpaca"
    shape = "alpaca" if formatting == "alpaca" else "sharegpt"
    ranking = raw.get("ranking", False)
    if ranking is not False:
        why = UNTRAINABLE_COLUMNS["chosen"] if ranking is True else f"expected true or false, got {ranking!r}"
        problems.add(None, f"{name}.ranking", why)
    split = raw.get("split", "train")
    if split not in ("train", None):
        problems.add(None, f"{name}.split", f"split {split!r}: a local file has only the 'train' split (a split or "
                                            "a slice of it cannot be chosen here): remove split or set it to 'train'")
    file_name = _file_name(name, raw, problems)
    num_samples = raw.get("num_samples")
    if num_samples is not None and (isinstance(num_samples, bool) or not isinstance(num_samples, int)
                                    or num_samples < 1):
        problems.add(None, f"{name}.num_samples", f"expected a positive whole number of rows, got {num_samples!r}")
    sha1 = raw.get("file_sha1")
    if sha1 is not None and not (isinstance(sha1, str) and len(sha1) == 40
                                 and all(c in "0123456789abcdefABCDEF" for c in sha1)):
        problems.add(None, f"{name}.file_sha1", f"expected the file's SHA-1 as 40 hex digits, got {sha1!r}")
    columns = _columns(name, raw.get("columns"), shape, problems)
    tags = _tags(name, raw.get("tags"), shape, problems)
    if problems.total > before or file_name is None:
        return None
    return LfEntry(name, file_name, shape, columns, tags, num_samples, sha1.lower() if sha1 else None)


def _file_name(name: str, raw: dict[str, Any], problems: Problems) -> str | None:
    if any(k in raw for k in REMOTE):
        return None  # already refused; a missing file_name would only repeat it
    value = raw.get("file_name")
    where = f"{name}.file_name"
    if value is None:
        problems.add(None, where, "missing: name the data file (or folder of files) inside the imported folder")
        return None
    if not isinstance(value, str) or not value.strip():
        problems.add(None, where, f"expected a file name, got {value!r}")
        return None
    path = PurePosixPath(value.replace("\\", "/"))
    if path.is_absolute() or ".." in path.parts or not path.parts or ":" in path.parts[0]:
        problems.add(None, where, f"{value!r} is outside the imported folder: name a file or folder inside it")
        return None
    return str(path)


def _columns(name: str, raw: Any, shape: str, problems: Problems) -> dict[str, str]:
    defaults = COLUMNS[shape]
    given = {} if raw is None else raw
    if not isinstance(given, dict):
        problems.add(None, f"{name}.columns", f"expected an object of column names, got {type(raw).__name__}")
        given = {}
    out = {k: v for k, v in defaults.items() if v is not None}
    for key, value in given.items():
        where = f"{name}.columns.{key}"
        if key in UNTRAINABLE_COLUMNS:
            if value is not None:
                problems.add(None, where, UNTRAINABLE_COLUMNS[key])
            continue
        if key not in defaults:
            other = next((s for s, cols in COLUMNS.items() if key in cols), None)
            why = (f"columns.{key} is read only with formatting {other}; this dataset is {shape}" if other else
                   f"unknown column key {key!r}; accepted for {shape}: {list(defaults)}")
            problems.add(None, where, why)
        elif value is None:
            if key in ("response", "messages"):
                problems.add(None, where, f"null {key} column: rows without responses (pre-training text) cannot "
                                          "be trained here; name the column")
            out.pop(key, None)
        elif not isinstance(value, str) or not value:
            problems.add(None, where, f"expected a column name, got {value!r}")
        else:
            out[key] = value
    return out


def _tags(name: str, raw: Any, shape: str, problems: Problems) -> dict[str, str | None]:
    if raw is not None and shape == "alpaca":
        problems.add(None, f"{name}.tags", "tags name the keys and roles of sharegpt messages; this dataset is "
                                           "alpaca (set formatting to sharegpt, or remove tags)")
        return {}
    given = {} if raw is None else raw
    if not isinstance(given, dict):
        problems.add(None, f"{name}.tags", f"expected an object, got {type(raw).__name__}")
        given = {}
    out = dict(TAGS)
    for key, value in given.items():
        where = f"{name}.tags.{key}"
        if key not in TAGS:
            problems.add(None, where, f"unknown tag {key!r}; accepted tags: {list(TAGS)}")
        elif value is None and key in OPTIONAL_TAGS:
            out[key] = None
        elif not isinstance(value, str) or not value:
            problems.add(None, where, f"expected a non-empty string, got {value!r}")
        else:
            out[key] = value
    roles = [k for k in TAGS if k not in ("role_tag", "content_tag") and out[k] is not None]
    for i, key in enumerate(roles):
        clash = next((k for k in roles[:i] if out[k] == out[key]), None)
        if clash is not None:
            problems.add(None, f"{name}.tags.{key}", f"{out[key]!r} is also {clash}: each role needs its own value")
    if out["role_tag"] == out["content_tag"]:
        problems.add(None, f"{name}.tags.content_tag", "role_tag and content_tag must be different keys")
    return out
