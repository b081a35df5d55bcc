"""Sharding a step over the CPU's cores gives the gradient of the whole batch, every time the same."""

from __future__ import annotations

import pytest
import torch

from appliance.trainer.data import Example
from appliance.trainer.loop import ShardedPass
from appliance.trainer.parallel import ShardPool, balanced_shards, can_shard, has_active_dropout


def _examples(lengths: list[int], vocab: int = 128, seed: int = 0) -> list[Example]:
    gen = torch.Generator().manual_seed(seed)
    out = []
    for n in lengths:
        ids = torch.randint(0, vocab, (n,), generator=gen).tolist()
        labels = [-100] * (n // 3) + ids[n // 3 :]  # labels on the last two thirds only
        out.append(Example(ids, labels))
    return out


def test_balanced_shards_split_tokens_evenly_and_keep_order() -> None:
    batch = _examples([40, 10, 35, 12])
    groups = balanced_shards(batch, 2)
    assert sorted(sum(len(e.input_ids) for e in g) for g in groups) == [47, 50]
    assert [batch.index(e) for e in groups[0]] == [0, 1] and [batch.index(e) for e in groups[1]] == [2, 3]
    assert balanced_shards(batch[:1], 2) == [batch[:1]]  # no empty shard


def _peft_llama(lora_dropout: float = 0.0) -> torch.nn.Module:
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    from appliance.trainer.kernels import patch_model

    config = LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=256, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2)
    torch.manual_seed(0)
    lora = LoraConfig(r=4, lora_alpha=8, lora_dropout=lora_dropout, target_modules=["q_proj", "v_proj"],
                      task_type="CAUSAL_LM")
    model = get_peft_model(LlamaForCausalLM(config), lora)
    for p in model.parameters():  # LoRA B starts at zero; make every gradient non-trivial
        if p.requires_grad:
            torch.nn.init.normal_(p, std=0.1)
    patch_model(model)
    return model


def _gradients(model: torch.nn.Module, pool: ShardPool, batch: list[Example]) -> tuple[float, list[torch.Tensor]]:
    base = model.get_base_model()  # type: ignore[operator]
    params = [p for p in model.parameters() if p.requires_grad]
    for p in params:
        p.grad = None
    n_labels = sum(e.label_count for e in batch)
    sharded = ShardedPass(base.model, base.lm_head, params, pool, 0, torch.device("cpu"))
    loss = sharded.accumulate(batch, n_labels)
    loss += sharded.accumulate(batch[:1], n_labels)  # accumulation onto existing gradients
    return loss, [p.grad.clone() for p in params if p.grad is not None]


@pytest.mark.parametrize("checkpointing", [False, True], ids=["plain", "gradient checkpointing"])
def test_sharded_step_gives_the_whole_batch_gradient_deterministically(checkpointing: bool) -> None:
    model = _peft_llama()
    if checkpointing:  # recomputation in backward runs on the shard's own thread
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    batch = _examples([23, 9, 17, 30, 12])
    serial = ShardPool(torch.device("cpu"), len(batch), enabled=False)
    sharded = ShardPool(torch.device("cpu"), len(batch), cores=2)
    assert (serial.shards, sharded.shards, sharded.threads_per_shard) == (1, 2, 1)
    try:
        loss_a, grads_a = _gradients(model, serial, batch)
        loss_b, grads_b = _gradients(model, sharded, batch)
        loss_c, grads_c = _gradients(model, sharded, batch)
        assert len(grads_a) == len(grads_b) == 8  # q and v, A and B, two layers
        assert loss_b == pytest.approx(loss_a, rel=1e-6)
        assert all(torch.allclose(a, b, rtol=1e-5, atol=1e-7) for a, b in zip(grads_a, grads_b, strict=True))
        assert loss_c == loss_b and all(torch.equal(b, c) for b, c in zip(grads_b, grads_c, strict=True))
        # The summed eval loss too, with the same shards.
        pass_a = ShardedPass(model.get_base_model().model, model.get_base_model().lm_head, [], serial, 0,
                             torch.device("cpu"))
        pass_b = ShardedPass(model.get_base_model().model, model.get_base_model().lm_head, [], sharded, 0,
                             torch.device("cpu"))
        assert pass_b.summed_loss(batch) == pytest.approx(pass_a.summed_loss(batch), rel=1e-6)
    finally:
        sharded.close()


def test_shards_only_on_cpu_without_dropout() -> None:
    assert has_active_dropout(_peft_llama(lora_dropout=0.1))
    assert not has_active_dropout(_peft_llama())
    assert can_shard(_peft_llama()) and not can_shard(_peft_llama(lora_dropout=0.1))
    import bitsandbytes as bnb

    assert not can_shard(torch.nn.Sequential(bnb.nn.Linear4bit(8, 8)))
    assert ShardPool(torch.device("cuda"), 4, cores=8).shards == 1
    pool = ShardPool(torch.device("cpu"), 4, cores=8)
    try:
        assert (pool.shards, pool.threads_per_shard) == (4, 2)
    finally:
        pool.close()
    assert ShardPool(torch.device("cpu"), 1, cores=2).shards == 1
