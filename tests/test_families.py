"""Every supported family end to end on a tiny model built from its config shape (tests/tiny_families.py):
import (the registry's family check), train LoRA a few steps (loss falls), merge, export F16 and Q8_0
(the appliance's writer or llama.cpp's converter, as the family table says), verification against torch
(F16: top-1 100%), then llama-cpp-python loads the GGUF and answers through the family's chat template.
The trainer and the exporter run through their real entry points (trainer/loop.py train, export/job.py
run), in this process."""

from __future__ import annotations

from pathlib import Path

import gguf
import pytest
import tiny_families
from conftest import make_settings

from appliance.bootstrap import bootstrap
from appliance.errors import ModelImportError
from appliance.models.chat import ChatTokenizer
from appliance.models.families import FAMILIES, family_of, serving_template, template_kwargs
from appliance.models.registry import BUNDLED_ID, import_model

# Family key -> the name the tiny model is imported as. llama.cpp marks `</s>`, `<s>`, `<unk>` in any
# model whose general.name says phi-3/phi3 and fails on a vocabulary without them (the SmolLM2 one).
NAMES = {"phi3": "tiny-phi-4-mini"}
# What each family's template renders when thinking is off (Qwen3: an empty think block to answer after).
NO_THINKING = {"qwen3": "<|im_start|>assistant\n<think>\n\n</think>\n\n", "smollm3": "Reasoning Mode: /no_think"}


@pytest.mark.parametrize("key", list(tiny_families.SPECS))
def test_family_trains_exports_verifies_and_answers(key: str, data_dir: Path, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    from llama_cpp import Llama
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    runtime = bootstrap(make_settings(data_dir))
    folder = tiny_families.build(key, tmp_path / NAMES.get(key, f"tiny-{key}"),
                                 data_dir / "models" / BUNDLED_ID / "hf")
    model = import_model(engine=runtime.engine, paths=runtime.paths, source=folder)
    runtime.engine.dispose()
    family = family_of(model.architecture)
    hf = runtime.paths.model_dir(model.id) / "hf"

    adapter, losses = tiny_families.train(hf, tmp_path, capsys)
    assert len(losses) == 8 and losses[-1] < 0.8 * losses[0], losses

    f16 = tiny_families.export(hf, tmp_path, "f16", model.id, adapter, None)
    v = f16["verification"]
    assert v["exporter"] == family.exporter, v
    assert v["top1_agreement"] == 1.0 or (v["next_token_top1"] == 1.0 and v["mean_kl"] < 1e-4), v
    assert v["next_token_top1"] == 1.0, v
    q8 = tiny_families.export(hf, tmp_path, "q8_0", model.id, adapter, f16["merged_path"])
    assert q8["verification"]["top1_agreement"] > 0.5, q8["verification"]
    reader = gguf.GGUFReader(q8["path"])
    assert reader.fields["general.architecture"].contents() == family.gguf_arch
    assert "Q8_0" in {t.tensor_type.name for t in reader.tensors}

    # llama-cpp-python renders the GGUF's template as the family's template renders (with the serving
    # defaults), and answers through it.
    served = reader.fields["tokenizer.chat_template"].contents()
    assert served == serving_template(tiny_families.template(key, data_dir / "models" / BUNDLED_ID / "hf"),
                                      model.architecture)
    question = tiny_families.messages(tiny_families.QUESTIONS[0][0])
    ours = ChatTokenizer(hf, template=served)
    formatter = Jinja2ChatFormatter(template=served, eos_token=ours.special["eos_token"] or "",
                                    bos_token=ours.special["bos_token"] or "")
    prompt = formatter(messages=question).prompt
    assert prompt == ours.render(question, add_generation_prompt=True)
    if family.template_defaults:  # kiosks: no reasoning preamble
        assert NO_THINKING[key] in prompt, prompt
        thinking = ChatTokenizer(hf, template=served).template.render(messages=question, add_generation_prompt=True,
                                                                      **template_kwargs(model.architecture,
                                                                                        thinking=True))
        assert thinking != prompt  # a deployment that asks for reasoning gets the family's thinking prompt
    llm = Llama(model_path=str(f16["path"]), n_ctx=256, verbose=False, n_threads=2)
    try:
        answer = llm.create_chat_completion(messages=question, max_tokens=6, temperature=0.0, seed=0)
    finally:
        llm.close()
    assert answer["usage"]["completion_tokens"] > 0 and isinstance(answer["choices"][0]["message"]["content"], str)


def test_families_cover_the_table_and_refuse_others() -> None:
    assert {f.key for f in FAMILIES} | {"smollm2"} == set(tiny_families.SPECS)
    with pytest.raises(ModelImportError, match="'FalconForCausalLM'.*supported: Llama 3.x.*Qwen3.*Gemma 3"):
        family_of("FalconForCausalLM")
    assert family_of("Qwen3ForCausalLM").template_defaults == {"enable_thinking": False}
    assert template_kwargs("LlamaForCausalLM") == {}
    once = serving_template("{{ x }}", "Qwen3ForCausalLM")
    assert serving_template(once, "Qwen3ForCausalLM") == once  # idempotent
