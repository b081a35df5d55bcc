"""Pure pieces of the trainer: health checks, the batch plan, assistant-only labels, config keys."""

from __future__ import annotations

from pathlib import Path

import pytest

from appliance.errors import InvalidInputError
from appliance.models.chat import ChatTokenizer
from appliance.models.registry import BUNDLED_ID
from appliance.trainer import data, rows
from appliance.trainer.config import IGNORED_KEYS, TrainConfig, list_presets, parse_config
from appliance.trainer.loop import TrainingError, check_health


def test_zero_gradient_at_the_first_step_fails_loudly() -> None:
    with pytest.raises(TrainingError, match="gradient norm at step 1 is exactly zero"):
        check_health(1, 2.0, 0.0, [2.0])


@pytest.mark.parametrize("loss", [float("nan"), float("inf")])
def test_non_finite_loss_fails(loss: float) -> None:
    with pytest.raises(TrainingError, match="loss became"):
        check_health(5, loss, 1.0, [])


def test_a_loss_that_never_moves_fails() -> None:
    with pytest.raises(TrainingError, match="has not moved in the first 10 steps"):
        check_health(10, 1.5, 0.3, [1.5] * 10)
    check_health(10, 1.4, 0.3, [1.5] * 9 + [1.4])  # moving: fine


def test_labels_cover_exactly_the_assistant_turns(template_dir: Path) -> None:
    tok = ChatTokenizer(template_dir / "models" / BUNDLED_ID / "hf")
    messages = [{"role": "user", "content": "Where is the lab?"}, {"role": "assistant", "content": "Floor 2."},
                {"role": "user", "content": "And parking?"}, {"role": "assistant", "content": "Behind the clinic."}]
    ex = rows.encode(tok, messages, 1024)
    assert ex is not None
    decoded = tok.tokenizer.decode([t for t in ex.labels if t != data.IGNORE], skip_special_tokens=False)
    assert decoded == "Floor 2.<|im_end|>\nBehind the clinic.<|im_end|>\n"
    assert "Where is the lab" not in decoded and len(ex.input_ids) == len(ex.labels)
    assert rows.encode(tok, messages, 8) is None  # not even the answer fits: dropped


def test_batch_plan_is_a_pure_function_of_seed_and_epoch() -> None:
    examples = [data.Example(list(range(n)), list(range(n))) for n in (5, 50, 7, 40, 6, 45, 8, 30)]
    a = data.BatchPlan(examples, 2, seed=3, group=True)
    b = data.BatchPlan(examples, 2, seed=3, group=True)
    assert [a.micro_batch(i) for i in range(12)] == [b.micro_batch(i) for i in reversed(range(12))][::-1]
    epoch0 = [len(e.input_ids) for i in range(4) for e in a.micro_batch(i)]
    assert sorted(epoch0) == sorted(len(e.input_ids) for e in examples)  # each example once per epoch
    for i in range(4):  # grouped: partners are neighbours in length
        lengths = sorted(len(e.input_ids) for e in a.micro_batch(i))
        assert lengths in ([5, 6], [7, 8], [30, 40], [45, 50])


def test_split_for_memory_keeps_order_and_respects_the_budget() -> None:
    batch = [data.Example([0] * n, [0] * n) for n in (100, 120, 130, 300)]
    parts = data.split_for_memory(batch, 256)
    assert [[len(e.input_ids) for e in p] for p in parts] == [[100, 120], [130], [300]]
    assert data.split_for_memory(batch, None) == [batch]
    assert [e for p in parts for e in p] == batch


def test_every_supported_config_key_is_in_the_readme() -> None:
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    supported = [k for k in TrainConfig.model_fields if k not in IGNORED_KEYS]
    missing = [k for k in supported if f"`{k}`" not in readme and f"`{k}`/" not in readme and f"/`{k}`" not in readme]
    assert missing == []


def test_presets_are_valid_configs() -> None:
    assert {"lora-cpu", "qlora-small"} <= set(list_presets())
    for name, preset in list_presets().items():
        parse_config(preset, name)  # presets are valid configs


def test_unknown_keys_are_named() -> None:
    with pytest.raises(InvalidInputError) as err:
        parse_config({"lora_rank": 8, "use_dora": True, "flash_attn": "fa2"})
    fields = sorted(p.field or "" for p in err.value.problems)
    assert fields == ["config.flash_attn", "config.use_dora"]


def test_training_children_get_jemalloc_when_installed() -> None:
    import os
    import subprocess
    import sys

    from appliance.trainer.allocator import jemalloc_path, training_env

    maps = subprocess.run([sys.executable, "-c", "print(open('/proc/self/maps').read())"],
                          env=training_env(dict(os.environ), "auto"), capture_output=True, text=True, check=True)
    assert ("libjemalloc" in maps.stdout) == (jemalloc_path() is not None)
    if os.environ.get("CI"):
        assert jemalloc_path() is not None, ".ci/run installs libjemalloc2"
    assert "LD_PRELOAD" not in training_env({}, "system")


def test_a_recorded_template_replaces_the_models_own(template_dir: Path) -> None:
    from appliance.models.templates import CHATML

    hf = template_dir / "models" / BUNDLED_ID / "hf"
    messages = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."}]
    own = ChatTokenizer(hf).render(messages)
    assert "named SmolLM" in own  # the model's own template adds its default system prompt
    chatml = ChatTokenizer(hf, template=CHATML)
    assert chatml.render(messages) == "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nHello.<|im_end|>\n"
    ex = rows.encode(chatml, messages, 64)
    assert ex is not None and len(ex.input_ids) < len(ChatTokenizer(hf).tokenizer.encode(own).ids)
