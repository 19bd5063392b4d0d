"""QLoRA on CPU (bitsandbytes 0.50.2): train a LoRA adapter on a tiny model loaded in 4-bit (nf4) or 8-bit,
save it, merge it into the full-precision base with ``geovl merge``, and check

- the merged weights are the base weights plus exactly the adapter's delta ``B @ A * alpha / r`` (and nothing
  else changed), so the adapter was applied;
- the logits of (quantized base + adapter) and of the merged full-precision model differ by no more than the
  quantization error itself: the adapter was trained against ``Q(W)``, the merge adds it to ``W``, so every
  layer's weights differ exactly by ``W - Q(W)``, as between the quantized and the full-precision base. The
  tolerance is that measured base gap on the same input: mean |Δlogit| within 1.5× of it, max within 2× (the
  adapter moves the activations the same rounding error acts on; measured ratios are in docs/qlora.md);
- the adapter's effect on the logits is the same in both worlds (quantized and merged), far above that error.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from sft_util import qa_samples, run_cli, train, write_dataset

pytest.importorskip("bitsandbytes")

FAMILIES = ("qwen2.5-vl", "qwen3-vl")


def _inputs(folder):
    from transformers import AutoProcessor

    proc = AutoProcessor.from_pretrained(folder)
    img = Image.fromarray(np.random.default_rng(1).integers(0, 256, (112, 140, 3), dtype=np.uint8))
    msgs = [{"role": "user", "content": [{"type": "image", "image": img}, {"type": "text", "text": "Is there water?"}]}]
    return proc.apply_chat_template(
        msgs, tokenize=True, add_generation_prompt=True, return_dict=True, return_tensors="pt"
    )


def _logits(model, inputs):
    with torch.no_grad():
        return model.eval()(**inputs).logits.float()


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_dataset(tmp_path_factory.mktemp("qlora") / "d.parquet", qa_samples(6))


@pytest.mark.parametrize("family,bits", [("qwen2.5-vl", "4bit"), ("qwen3-vl", "4bit"), ("qwen2.5-vl", "8bit")])
def test_qlora_trains_saves_and_merges_into_full_precision(tiny_model_dir, data, tmp_path, capsys, family, bits):
    from peft import PeftModel
    from transformers import AutoModelForImageTextToText

    from geovl.train.model_setup import load_model_and_processor

    base = tiny_model_dir(family)
    run = tmp_path / "run"
    rc, err = train(capsys, base, data, run, "max_steps=3", "lr=1e-2", "warmup_ratio=0", f"quantization={bits}")
    assert rc == 0, err[-3000:]
    final = run / "final"
    summary = json.loads((run / "train_summary.json").read_text())
    assert summary["steps"] == 3 and np.isfinite(summary["train_loss"])
    lora = load_file(str(final / "adapter_model.safetensors"))
    assert any(".lora_B." in k and v.abs().max() > 0 for k, v in lora.items())  # B starts at 0: it trained

    # the quantized model really was quantized (only the LLM's linear layers; vision + merger in full precision)
    qbase, _, _ = load_model_and_processor(str(base), quantization=bits)
    kinds = {type(m).__name__ for n, m in qbase.named_modules() if ".language_model.layers." in n}
    assert ("Linear4bit" if bits == "4bit" else "Linear8bitLt") in kinds
    assert not any("bit" in type(m).__name__ for n, m in qbase.named_modules() if ".visual." in n)

    merged_dir = tmp_path / "merged"
    rc, err = run_cli(capsys, "merge", "--base", base, "--adapter", final, "--out", merged_dir)
    assert rc == 0, err[-3000:]
    info = json.loads((merged_dir / "geovl_merge.json").read_text())
    assert info["kind"] == "lora" and info["lora_tensors"] > 0 and info["dtype"] == "float32"

    # 1. merged = base + B·A·alpha/r on every LoRA target, and equal elsewhere (merger: modules_to_save values)
    cfg = json.loads((final / "adapter_config.json").read_text())
    scale = cfg["lora_alpha"] / cfg["r"]
    full = AutoModelForImageTextToText.from_pretrained(base)
    merged = AutoModelForImageTextToText.from_pretrained(merged_dir)  # stock transformers, no peft
    w_base, w_merged = full.state_dict(), merged.state_dict()
    targets = 0
    for k, a in lora.items():
        if ".lora_A." not in k:
            continue
        name = k.replace("base_model.model.", "", 1).replace(".lora_A.weight", ".weight")
        delta = (lora[k.replace("lora_A", "lora_B")].double() @ a.double() * scale).float()
        assert delta.abs().max() > 0, name
        torch.testing.assert_close(w_merged[name] - w_base[name], delta, rtol=1e-4, atol=1e-6)
        targets += 1
    assert targets == info["lora_tensors"] // 2
    saved = {
        k.replace("base_model.model.", "", 1).replace(".modules_to_save.default", "") for k in lora if ".lora_" not in k
    }
    touched = {
        k.replace("base_model.model.", "", 1).replace(".lora_A.weight", ".weight") for k in lora if ".lora_A." in k
    }
    for name, w in w_base.items():
        if name not in touched and name not in saved:
            assert torch.equal(w_merged[name], w), name

    # 2. logits: (quantized base + adapter) vs merged full precision, within the quantization error
    inputs = _inputs(base)
    l_full = _logits(full, inputs)
    l_q = _logits(qbase, inputs)
    quant_err = (l_q - l_full).abs().max().item()
    assert 0 < quant_err < 0.5 * l_full.abs().max().item()  # quantized, but still the same model
    l_qa = _logits(PeftModel.from_pretrained(qbase, str(final)), inputs)
    l_merged = _logits(merged, inputs)
    gap = (l_qa - l_merged).abs().max().item()
    # the same quantization error, met at the adapted weights instead of the base ones: on average no larger,
    # element by element within 2× (the adapter shifts the activations the rounding error acts on)
    quant_mean = (l_q - l_full).abs().mean().item()
    gap_mean = (l_qa - l_merged).abs().mean().item()
    assert gap_mean <= 1.5 * quant_mean and gap <= 2 * quant_err, (gap_mean, quant_mean, gap, quant_err)

    # 3. the adapter changed the model, by the same amount in the quantized and the merged world
    effect_merged = l_merged - l_full
    effect_q = l_qa - l_q
    assert effect_merged.abs().max() > 3 * quant_err, (effect_merged.abs().max(), quant_err)
    cos = torch.nn.functional.cosine_similarity(effect_merged.flatten(), effect_q.flatten(), dim=0).item()
    assert cos > 0.9, cos
    print(
        f"{family} {bits}: quant max/mean {quant_err:.4g}/{quant_mean:.4g} gap max/mean {gap:.4g}/{gap_mean:.4g} "
        f"adapter effect max {effect_merged.abs().max().item():.4g} cos {cos:.4f}"
    )


def test_quantized_full_tuning_is_refused_before_loading(tiny_model_dir, data, tmp_path, capsys):
    run = tmp_path / "run"
    rc, err = train(
        capsys, tiny_model_dir("qwen2.5-vl"), data, run, "max_steps=1", "quantization=4bit", "tune_llm=full"
    )
    assert rc == 2 and "quantized weights cannot be trained" in err and "Traceback" not in err
    assert not (run / "final").exists()


def test_probe_names_why_bitsandbytes_cannot_run(monkeypatch):
    from geovl.train import model_setup

    monkeypatch.setitem(model_setup._PROBED, ("8bit", "cpu"), "RuntimeError: no native library for this CPU")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(
        model_setup.ModelSetupError, match=r"cannot run 8bit layers on this machine's cpu \(RuntimeError: no native"
    ):
        model_setup.check_quantization("8bit")
    model_setup.check_quantization("4bit")  # the real probe: bitsandbytes 0.50.2 runs nf4 on this CPU
