"""The evaluation child: `python -m appliance.evaluation SPEC.json` (spec: child_protocol.EvalSpec).

Reads the eval rows from the normalized dataset (each row: its conversation up to the last assistant
turn is the prompt, that turn's text the reference), skips the questions an earlier attempt scored
(`questions.jsonl` in out_dir: one QuestionResult per line, appended and fsynced as each is scored, in
the order answers end, which with several questions decoded together is not index order: lines are
matched to questions by `index`),
waits between questions while kiosks are being answered (serving.ServingGate), and writes the whole
result to `result.json` by a rename once every question is scored. Messages on stdout: progress (the
fraction of questions scored), done (the aggregates), error.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from appliance.child_protocol import EvalDone, EvalSpec, Failed, Progress, emit, read_spec
from appliance.evaluation.schemas import EvalRow, Message, QuestionResult
from appliance.serving import ServingGate


def eval_rows(dataset_path: Path) -> list[EvalRow]:
    """Eval rows of a normalized dataset: prompt = every message before the last assistant message,
    reference = that message. Raises ValueError naming the line of a row with no assistant answer."""
    rows = []
    for line_no, line in enumerate(dataset_path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        messages = json.loads(line)["messages"]
        last = max((i for i, m in enumerate(messages) if m["role"] == "assistant"), default=None)
        if last is None or last == 0:
            raise ValueError(f"{dataset_path.name}: line {line_no}: no question before an assistant answer")
        prompt = [Message(role=m["role"], content=m["content"]) for m in messages[:last]]
        rows.append(EvalRow(id=f"row-{line_no}", messages=prompt, reference=messages[last]["content"]))
    if not rows:
        raise ValueError(f"{dataset_path.name}: the dataset has no rows")
    return rows


def scored_before(path: Path) -> list[QuestionResult]:
    """What an earlier attempt scored. A last line cut by a kill (no newline) is dropped from the file."""
    if not path.exists():
        return []
    data = path.read_bytes()
    complete = data[: data.rfind(b"\n") + 1]
    if len(complete) != len(data):
        with open(path, "r+b") as f:
            f.truncate(len(complete))
    return [QuestionResult.model_validate_json(line) for line in complete.splitlines() if line.strip()]


def run(spec: EvalSpec) -> EvalDone:
    from appliance.evaluation.run import evaluate, plan

    rows = eval_rows(spec.dataset_path)
    spec.out_dir.mkdir(parents=True, exist_ok=True)
    questions_file = spec.out_dir / "questions.jsonl"
    done = scored_before(questions_file)
    total = len(plan(rows, spec.retention))
    gate = ServingGate.from_spec(spec.serving)
    emit(Progress(stage="questions", progress=len(done) / total, detail=f"{len(done)}/{total}"))
    with open(questions_file, "a", encoding="utf-8") as out:

        def progress(result: QuestionResult, scored: int, total: int) -> None:
            out.write(result.model_dump_json() + "\n")
            out.flush()
            os.fsync(out.fileno())
            emit(Progress(stage="questions", progress=scored / total, detail=f"{scored}/{total}"))
            gate.wait()

        result = evaluate(spec.model_path, rows, lora_path=spec.lora_path, retention=spec.retention, done=done,
                          progress=progress, max_tokens=spec.max_tokens, parallel=spec.parallel,
                          model_name=spec.model_name)
    partial = spec.out_dir / "result.json.partial"
    partial.write_text(result.model_dump_json())
    with open(partial, "rb") as f:
        os.fsync(f.fileno())
    os.replace(partial, spec.out_dir / "result.json")
    return EvalDone(eval_set=result.eval_set, questions=len(result.questions), seconds=result.seconds,
                    metrics={k: v.model_dump() for k, v in result.metrics.items()})


def main(argv: list[str]) -> int:
    try:
        spec = read_spec(Path(argv[0]), EvalSpec)
    except Exception as exc:  # a spec the child cannot read: said as a message, not a traceback
        emit(Failed(message=f"the evaluation could not read its spec: {exc}"))
        return 2
    try:
        emit(run(spec))
    except Exception as exc:
        print(f"evaluation failed: {exc!r}", file=sys.stderr)
        emit(Failed(message=f"the evaluation failed: {exc}"))
        return 1
    return 0
