"""End to end: does a fine-tune help, by the appliance's own evaluation? A FAQ of a few hundred pairs,
a separate eval set of the same facts asked in other words, the bundled SmolLM2-135M fine-tuned on the
FAQ (the lora-cpu preset), exported to Q8_0, both models evaluated on the eval set (with the retention
probe), compared, and the deployment gate asked about the fine-tune.

    .venv/bin/python bench/eval_gate.py [--facts 60] [--steps 150]

Runs in-process on a fresh data directory in bench/.work/eval_gate (the API through its ASGI app, the
worker's loop driven here, its children real processes). Writes bench/results/eval_gate.json; the
README's evaluation table comes from it.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

PLACES = ["pharmacy", "lab", "x-ray room", "cafeteria", "parking garage", "front desk", "chapel", "gift shop",
          "blood bank", "maternity ward", "dialysis unit", "eye clinic", "dental clinic", "physiotherapy",
          "cardiology", "oncology", "pediatrics", "radiology", "emergency room", "billing office", "library",
          "ATM", "post office", "nursery", "ICU", "MRI room", "vaccination desk", "lost and found",
          "security office", "waiting lounge"]
HOURS = ["7 am to 7 pm", "8 am to 5 pm", "24 hours", "9 am to 9 pm", "6 am to 10 pm"]


def facts(n: int) -> list[dict[str, str]]:
    out = []
    for i in range(n):
        place = PLACES[i % len(PLACES)] + ("" if i < len(PLACES) else f" annex {i // len(PLACES) + 1}")
        out.append({"place": place, "floor": str(i % 5 + 1), "room": str(100 + i), "hours": HOURS[i % len(HOURS)]})
    return out


def train_rows(fs: list[dict[str, str]]) -> list[dict[str, str]]:
    rows = []
    for f in fs:
        where = f"The {f['place']} is on floor {f['floor']}, room {f['room']}."
        when = f"The {f['place']} is open {f['hours']}."
        rows += [{"instruction": f"Where is the {f['place']}?", "output": where},
                 {"instruction": f"How do I find the {f['place']}?", "output": where},
                 {"instruction": f"When is the {f['place']} open?", "output": when},
                 {"instruction": f"What are the opening hours of the {f['place']}?", "output": when}]
    return rows


def eval_rows(fs: list[dict[str, str]]) -> list[dict[str, str]]:
    rows = []
    for f in fs:  # the same facts, asked as the training set never asks them
        rows.append({"instruction": f"Could you tell me where the {f['place']} is located?",
                     "output": f"The {f['place']} is on floor {f['floor']}, room {f['room']}."})
    return rows


def jsonl(rows: list[dict[str, str]]) -> bytes:
    return ("\n".join(json.dumps(r) for r in rows) + "\n").encode()


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--facts", type=int, default=60)
    parser.add_argument("--steps", type=int, default=150)
    args = parser.parse_args()

    from fastapi.testclient import TestClient

    from appliance.api.app import create_app
    from appliance.bootstrap import bootstrap
    from appliance.models.registry import BUNDLED_ID, ensure_bundled
    from appliance.settings import Settings
    from appliance.worker.worker import Worker

    work = ROOT / "bench" / ".work" / "eval_gate"
    shutil.rmtree(work, ignore_errors=True)
    runtime = bootstrap(Settings(data_dir=work, admin_token="bench"))
    ensure_bundled(engine=runtime.engine, paths=runtime.paths)
    worker = Worker(runtime)
    fs = facts(args.facts)
    t0 = time.monotonic()
    with TestClient(create_app(runtime=runtime)) as c:
        c.headers["Authorization"] = "Bearer bench"

        def ok(r: Any) -> Any:
            assert r.status_code < 300, r.text
            return r.json()

        def until(check: Any, what: str) -> None:
            while not check():
                for line in worker.run_once():
                    print(f"[worker] {line}", flush=True)
                time.sleep(0.05)
            print(f"{time.monotonic() - t0:7.0f} s  {what}", flush=True)

        train = ok(c.post("/api/datasets", files={"file": ("faq.jsonl", jsonl(train_rows(fs)))}))
        golden = ok(c.post("/api/datasets", files={"file": ("golden.jsonl", jsonl(eval_rows(fs)))},
                           data={"purpose": "eval"}))
        run = ok(c.post("/api/runs", json={"dataset_id": train["id"], "base_model_id": BUNDLED_ID, "preset": "lora-cpu",
                                           "name": "faq", "config": {"max_steps": args.steps,
                                                                     "export_gguf": ["q8_0"]}}))
        until(lambda: ok(c.get(f"/api/runs/{run['id']}"))["status"] in ("succeeded", "failed"), "trained")
        train_s = time.monotonic() - t0
        until(lambda: any(a["status"] in ("ready", "failed") for a in ok(c.get("/api/artifacts",
                                                                              params={"kind": "gguf"}))), "exported")
        (art,) = ok(c.get("/api/artifacts", params={"kind": "gguf"}))
        base_ev = ok(c.post("/api/evaluations", json={"base_model_id": BUNDLED_ID, "dataset_id": golden["id"]}))
        ft_ev = ok(c.post("/api/evaluations", json={"artifact_id": art["id"], "dataset_id": golden["id"]}))
        e0 = time.monotonic()
        until(lambda: all(ok(c.get(f"/api/evaluations/{e['id']}"))["status"] in ("succeeded", "failed")
                          for e in (base_ev, ft_ev)), "evaluated")
        eval_s = time.monotonic() - e0
        base, ft = (ok(c.get(f"/api/evaluations/{e['id']}")) for e in (base_ev, ft_ev))
        cmp = ok(c.get("/api/evaluations/compare", params={"baseline": base["id"], "candidate": ft["id"]}))
        dep = c.post("/api/deployments", json={"artifact_id": art["id"]})
    result = {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()}, {__import__('os').cpu_count()} cores",
        "train_rows": len(train_rows(fs)), "eval_rows": len(fs), "steps": args.steps, "train_s": round(train_s),
        "evaluations_s": round(eval_s), "questions_per_evaluation": base["questions_total"],
        "base": {"id": base["id"], "intervals": base["intervals"]},
        "fine_tune": {"id": ft["id"], "intervals": ft["intervals"]},
        "comparison": [{k: m[k] for k in ("metric", "baseline", "candidate", "diff", "low", "high", "verdict")}
                       for m in cmp["metrics"]],
        "examples": cmp["questions"][:3],
        "gate": {"status_code": dep.status_code, "status": dep.json().get("status"),
                 "gate": dep.json().get("gate", {}).get("status") if dep.status_code < 300 else dep.json()},
    }
    out = ROOT / "bench" / "results" / "eval_gate.json"
    out.write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n")
    for m in result["comparison"]:
        print(f"{m['metric']:<13} {m['baseline']:8.3f} -> {m['candidate']:8.3f}  [{m['low']:+.3f}, {m['high']:+.3f}]"
              f"  {m['verdict']}")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
