"""The vision-tower keep-alive of geovl.train.sharded, in one process: on a text-only batch it runs the vision
tower on a dummy image (so sharded ranks gather the same weights) without changing the loss, the logits or any
gradient of the language model; the tower's own gradients are exact zeros. Off when nothing is sharded."""

from __future__ import annotations

import pytest
import torch

from geovl.train import sharded


def _text_batch(model_dir):
    from transformers import AutoProcessor

    proc = AutoProcessor.from_pretrained(model_dir)
    enc = proc.tokenizer(["a text-only question and its answer", "短一点"], return_tensors="pt", padding=True)
    enc["labels"] = enc["input_ids"].clone()
    return dict(enc)


def _loss_and_grads(model, batch):
    model.zero_grad(set_to_none=True)
    out = model(**batch)
    out.loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return out.loss.detach(), out.logits.detach(), grads


@pytest.mark.parametrize("family", ["qwen2.5-vl", "qwen3-vl"])
def test_keepalive_runs_tower_on_text_batch_and_changes_nothing(family, tiny_model_dir, monkeypatch):
    from transformers import AutoModelForImageTextToText

    d = tiny_model_dir(family)
    model = AutoModelForImageTextToText.from_pretrained(d, dtype=torch.float32)
    model.train()
    batch = _text_batch(d)
    loss0, logits0, g0 = _loss_and_grads(model, batch)
    assert not any(".visual." in n or n.startswith("model.visual") for n in g0)  # plain forward: the tower never ran

    calls = []
    assert sharded.keep_vision_tower_in_step(model) and sharded.keep_vision_tower_in_step(model)  # idempotent
    core = sharded._vl_core(model)
    core.visual.register_forward_hook(lambda m, a, o: calls.append(a[0].shape))

    # one process: the hooks stay out of the way
    loss1, _, g1 = _loss_and_grads(model, batch)
    assert calls == [] and torch.equal(loss1, loss0) and g1.keys() == g0.keys()

    # several processes: the tower runs once per forward on a one-token dummy image, and changes nothing else
    monkeypatch.setattr(sharded, "_active", lambda module: True)
    loss2, logits2, g2 = _loss_and_grads(model, batch)
    assert len(calls) == 1
    merge = model.config.vision_config.spatial_merge_size
    assert calls[0][0] == merge * merge
    assert torch.equal(loss2, loss0) and torch.equal(logits2, logits0)
    tower = {n for n in g2 if n not in g0}
    assert tower and all("visual" in n for n in tower)  # the tower took part in backward ...
    assert all(torch.count_nonzero(g2[n]) == 0 for n in tower)  # ... with exact zero gradients
    assert all(torch.equal(g2[n], g0[n]) for n in g0)

    # generate on a text-only prompt: the dummy runs in the prefill, not in the decode steps
    calls.clear()
    model.zero_grad(set_to_none=True)
    with torch.no_grad():
        ids = batch["input_ids"][:1]
        model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=3, do_sample=False)
    assert len(calls) == 1  # prefill only; decode steps with a filled cache are skipped


def test_dummy_input_matches_tower_geometry(tiny_model_dir):
    from transformers import AutoModelForImageTextToText

    model = AutoModelForImageTextToText.from_pretrained(tiny_model_dir("qwen2.5-vl"), dtype=torch.float32)
    visual = sharded._vl_core(model).visual
    pixels, grid = sharded.dummy_vision_input(visual)
    c = visual.config
    assert grid.tolist() == [[1, c.spatial_merge_size, c.spatial_merge_size]]
    assert pixels.shape == (c.spatial_merge_size**2, c.in_channels * c.temporal_patch_size * c.patch_size**2)
    out = visual(pixels, grid_thw=grid)
    assert sharded._sum_floats(out) is not None
