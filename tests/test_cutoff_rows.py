"""Rows past cutoff_len (case 06 and its other faces), on the bundled model's own tokenizer and chat
template: a row loses its prompt before its answer, is dropped only when its answer alone does not
fit, and every row cut or dropped is counted and named."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from appliance.models.chat import ChatTokenizer
from appliance.models.registry import BUNDLED_ID
from appliance.trainer import data, rows

CASES = Path(__file__).resolve().parent / "cases"
LONG_ROWS = CASES / "long_rows.jsonl"


@pytest.fixture(scope="module")
def tok(template_dir: Path) -> ChatTokenizer:
    return ChatTokenizer(template_dir / "models" / BUNDLED_ID / "hf")


def text_of(tok: ChatTokenizer, ids: list[int]) -> str:
    return str(tok.tokenizer.decode(ids, skip_special_tokens=False))


def labels_of(tok: ChatTokenizer, ex: data.Example) -> str:
    return text_of(tok, [t for t in ex.labels if t != data.IGNORE])


def case_rows() -> list[list[dict[str, Any]]]:
    return [json.loads(line)["messages"] for line in LONG_ROWS.read_text().splitlines()]


def test_case06_rows_past_the_cutoff_are_counted_and_named(tok: ChatTokenizer) -> None:
    examples, report = rows.load_examples(LONG_ROWS, tok, 256, None)
    assert (report.rows, report.used, report.truncated_count, report.dropped_count) == (6, 5, 1, 1)
    assert [n.row for n in report.truncated] == [3] and [n.row for n in report.dropped] == [5]
    assert report.truncated[0].tokens > 5000 and report.truncated[0].kept is not None
    assert 200 < report.truncated[0].kept <= 256
    assert "tokens of the last user message cut" in report.truncated[0].detail
    assert "raise cutoff_len to at least" in report.dropped[0].detail
    assert report.summary() == "5 of 6 rows used at cutoff_len 256; 1 truncated (row 3); 1 dropped (row 5)"
    assert all(len(e.input_ids) <= 256 for e in examples)
    assert json.loads(json.dumps(report.as_dict()))["truncated"][0]["row"] == 3  # what the trainer emits


def test_a_long_prompt_is_cut_from_its_start_and_the_answer_keeps_every_label(tok: ChatTokenizer) -> None:
    messages = case_rows()[2]  # a pasted machine log, then "Is anything wrong?"
    fitted = rows.fit(tok, messages, 256)
    assert fitted.example is not None and len(fitted.example.input_ids) <= 256
    assert labels_of(tok, fitted.example) == messages[1]["content"] + "<|im_end|>\n"
    text = text_of(tok, fitted.example.input_ids)
    assert text.startswith("<|im_start|>system\n")  # the template's structure survives
    assert "Is anything wrong?<|im_end|>\n<|im_start|>assistant\n" in text  # the end of the question too
    assert "Here is last week's log" not in text  # the start of the user message went


def test_rows_that_fit_are_untouched(tok: ChatTokenizer) -> None:
    for messages in (case_rows()[0], case_rows()[1]):
        fitted = rows.fit(tok, messages, 256)
        assert fitted.note is None and fitted.example == data.encode_full(tok, messages)


def test_multi_turn_rows_lose_their_earliest_exchanges_first(tok: ChatTokenizer) -> None:
    log = case_rows()[2][0]["content"]
    messages = [{"role": "system", "content": "You are the press assistant."},
                {"role": "user", "content": log}, {"role": "assistant", "content": "Nothing is wrong."},
                {"role": "user", "content": "Which coolant does the Orion 5 lathe use?"},
                {"role": "assistant", "content": "12 litres of CX-7 coolant."}]
    fitted = rows.fit(tok, messages, 128)
    assert fitted.example is not None and fitted.note == "the first 1 exchange(s) removed"
    assert fitted.example == data.encode_full(tok, [messages[0], *messages[3:]])
    assert labels_of(tok, fitted.example) == "12 litres of CX-7 coolant.<|im_end|>\n"


def test_context_turns_after_the_last_trained_answer_go_before_anything_else(tok: ChatTokenizer) -> None:
    log = case_rows()[2][0]["content"]
    messages = [{"role": "user", "content": "What does E42 mean?"},
                {"role": "assistant", "content": "The door interlock is open."},
                {"role": "user", "content": log}, {"role": "assistant", "content": "Fine.", "weight": 0}]
    fitted = rows.fit(tok, messages, 128)
    assert fitted.example is not None and fitted.note == "2 turn(s) after the last trained answer removed"
    assert labels_of(tok, fitted.example) == "The door interlock is open.<|im_end|>\n"


def test_a_row_whose_answer_alone_does_not_fit_is_dropped_saying_what_it_needs(tok: ChatTokenizer) -> None:
    fitted = rows.fit(tok, case_rows()[4], 256)  # a 5,000-token answer
    assert fitted.example is None and fitted.tokens > 4000
    needed = int(fitted.note.split("at least ")[1].split()[0]) if fitted.note else 0
    assert 256 < needed < fitted.tokens
    assert rows.fit(tok, case_rows()[4], needed).example is not None  # and that cutoff is indeed enough


def test_the_named_rows_are_capped_but_the_counts_are_exact(tok: ChatTokenizer, tmp_path: Path) -> None:
    long_row = [{"role": "user", "content": "Spell it out."}, {"role": "assistant", "content": "word " * 80}]
    path = tmp_path / "many.jsonl"
    path.write_text("".join(json.dumps({"messages": long_row}) + "\n" for _ in range(rows.NAMED_ROWS + 5)))
    examples, report = rows.load_examples(path, tok, 48, None)
    assert examples == [] and report.dropped_count == rows.NAMED_ROWS + 5
    assert len(report.dropped) == rows.NAMED_ROWS and report.dropped[-1].row == rows.NAMED_ROWS
    assert report.summary().endswith(f"(row 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20 "
                                     f"and {rows.NAMED_ROWS - 15} more)")
