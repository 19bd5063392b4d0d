"""What trains: LoRA on the LLM / vision tower, freezing each part, full fine-tuning, per-part
learning rates, LoRA hyper-parameters, DoRA, quantization refused without bitsandbytes — on all three families."""

from __future__ import annotations

import json
import re

import pytest
import torch
from safetensors.torch import load_file

from conftest import TINY_FAMILIES
from geovl.models.registry import get_family
from geovl.train.model_setup import ModelSetupError, param_groups, setup_trainable, trainable_table
from geovl.train.recipe import load_recipe
from sft_util import adapter, qa_samples, train, write_dataset


def _recipe(*over):
    return load_recipe(None, ["model=m", "train_data=d.parquet", *over])


def _model(folder):
    from transformers import AutoModelForImageTextToText

    return AutoModelForImageTextToText.from_pretrained(folder)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_dataset(tmp_path_factory.mktemp("tuning") / "d.parquet", qa_samples(8))


def _trainable(model) -> set[str]:
    return {n for n, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_lora_targets_and_freezing_come_from_the_registry(tiny_model_dir, family):
    fam = get_family(family)
    folder = tiny_model_dir(family)
    # vision LoRA + trained merger
    m, mts = setup_trainable(_model(folder), fam, _recipe("tune_vision=lora", "tune_merger=full"))
    names = [n for n, _ in m.named_modules()]
    vis_lora = {n.split(".lora_A")[0] for n in names if ".visual.blocks." in n and n.endswith("lora_A")}
    depth = len({re.search(r"blocks\.(\d+)", n).group(1) for n in vis_lora})
    assert depth == 2 and len(vis_lora) == 2 * len(fam.vision_attn + fam.vision_mlp)  # every block, every linear
    llm_lora = {n.split(".lora_A")[0] for n in names if ".language_model.layers." in n and n.endswith("lora_A")}
    assert len(llm_lora) == 2 * 7  # q k v o gate up down in both layers
    assert not any("lora_A" in n for n in names if ".merger" in n or "deepstack" in n or "lm_head" in n or "embed" in n)
    trainable = _trainable(m)
    merger_params = {
        n for n in dict(m.named_parameters()) if fam.part_of(n) == "merger" and ".original_module." not in n
    }
    assert merger_params and merger_params <= trainable
    if family == "qwen3-vl":  # the deepstack mergers are mergers: trained with the merger
        assert any("deepstack_merger_list.0" in x for x in mts) and any(
            "deepstack_merger_list" in n for n in merger_params
        )
    # everything trainable is a LoRA weight or part of a trained module copy
    assert all("lora_" in n or ".modules_to_save." in n for n in trainable)

    # LLM LoRA only, vision and merger (and Qwen3-VL's deepstack mergers) frozen
    m2, mts2 = setup_trainable(_model(folder), fam, _recipe("tune_vision=freeze", "tune_merger=freeze"))
    assert mts2 == [] and not any("visual" in n for n in _trainable(m2))
    assert all("lora_" in n and ".language_model.layers." in n for n in _trainable(m2))


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_full_and_frozen_parts_without_lora(tiny_model_dir, family):
    fam = get_family(family)
    folder = tiny_model_dir(family)
    m, mts = setup_trainable(_model(folder), fam, _recipe("tune_llm=full", "tune_vision=freeze", "tune_merger=freeze"))
    parts = {fam.part_of(n) for n in _trainable(m)}
    assert mts == [] and parts == {"llm"}  # embeddings follow tune_embeddings, not tune_llm
    m, _ = setup_trainable(
        _model(folder), fam, _recipe("tune_llm=freeze", "tune_vision=full", "tune_merger=full", "tune_embeddings=true")
    )
    assert {fam.part_of(n) for n in _trainable(m)} == {"vision", "merger", "embed", "lm_head"}
    with pytest.raises(ModelSetupError, match="nothing would train"):
        setup_trainable(_model(folder), fam, _recipe("tune_llm=freeze", "tune_vision=freeze", "tune_merger=freeze"))
    # tune_llm=full next to vision LoRA: the decoder layers + final norm are trained copies, not the embeddings
    m, mts = setup_trainable(_model(folder), fam, _recipe("tune_llm=full", "tune_vision=lora", "tune_merger=freeze"))
    assert "model.language_model.norm" in mts and not any("embed" in x for x in mts)
    table = trainable_table(m, fam)
    assert table["llm"][0] == table["llm"][1] and table["embed"][0] == 0 and 0 < table["vision"][0] < table["vision"][1]


def test_per_part_learning_rates_reach_the_optimizer(tiny_model_dir, tmp_path):
    from transformers import TrainingArguments

    from geovl.train.trainer import GeoVLTrainer

    fam = get_family("qwen3-vl")
    recipe = _recipe(
        "tune_vision=lora", "tune_merger=full", "lr=1e-3", "lr_vision=1e-5", "lr_merger=2e-4", "weight_decay=0.1"
    )
    model, _ = setup_trainable(_model(tiny_model_dir("qwen3-vl")), fam, recipe)
    args = TrainingArguments(
        output_dir=str(tmp_path), use_cpu=True, report_to=[], learning_rate=recipe.lr, weight_decay=0.1
    )
    trainer = GeoVLTrainer(model=model, args=args, param_groups_fn=lambda m: param_groups(m, fam, recipe))
    opt = trainer.create_optimizer()
    by_id = {id(p): n for n, p in model.named_parameters()}
    seen = {}
    for g in opt.param_groups:
        for p in g["params"]:
            n = by_id[id(p)]
            assert n not in seen
            seen[n] = (g["lr"], g["weight_decay"])
    assert set(seen) == _trainable(model)  # every trainable parameter exactly once, nothing frozen
    params = dict(model.named_parameters())
    for n, (lr, wd) in seen.items():
        assert lr == {"vision": 1e-5, "merger": 2e-4}.get(fam.part_of(n), 1e-3), n
        no_decay = params[n].ndim < 2 or "norm" in n.lower() or n.endswith(".bias")
        assert wd == (0.0 if no_decay else 0.1), n
    assert {g["lr"] for g in opt.param_groups} == {1e-5, 2e-4, 1e-3}
    assert any(g["weight_decay"] == 0.1 for g in opt.param_groups) and any(
        g["weight_decay"] == 0.0 for g in opt.param_groups
    )


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_vision_lora_and_merger_really_train(tiny_model_dir, data, tmp_path, capsys, family):
    fam = get_family(family)
    base = tiny_model_dir(family)
    out = tmp_path / "run"
    rc, err = train(
        capsys,
        base,
        data,
        out,
        "max_steps=2",
        "tune_vision=lora",
        "tune_merger=full",
        "lr=1e-2",
        "lora_r=4",
        "lora_alpha=8",
        "lora_dropout=0.1",
        "warmup_ratio=0",
    )
    assert rc == 0, err[-2000:]
    ad = adapter(out / "final")
    cfg = json.loads((out / "final" / "adapter_config.json").read_text())
    assert (cfg["r"], cfg["lora_alpha"], cfg["lora_dropout"], cfg["use_dora"]) == (4, 8, 0.1, False)
    vis_b = [k for k in ad if ".visual.blocks." in k and "lora_B" in k]
    assert vis_b and all(ad[k].abs().sum() > 0 for k in vis_b)  # LoRA B starts at 0: non-zero = got gradients
    assert all(v.shape[0] == 4 for k, v in ad.items() if "lora_A" in k)
    merger = {k: v for k, v in ad.items() if fam.part_of(k.replace("base_model.model.", "", 1)) == "merger"}
    if family == "qwen3-vl":
        assert any("deepstack_merger_list" in k for k in merger)
    base_sd = _model(base).state_dict()
    changed = 0
    for k, v in merger.items():
        changed += not torch.equal(v, base_sd[k.replace("base_model.model.", "", 1)])
    assert changed == len(merger) > 0  # every trained merger tensor moved away from the base
    # the per-part table printed to the user matches the parameters really set up
    m, _ = setup_trainable(_model(base), fam, _recipe("tune_vision=lora", "tune_merger=full", "lora_r=4"))
    for part, (t, a) in trainable_table(m, fam).items():
        assert re.search(rf"\n  {part}\s+{t:,} /\s+{a:,}", err), (part, t, a)
    summary = json.loads((out / "train_summary.json").read_text())["trainable"]
    assert summary["vision"]["trainable"] > 0 and summary["merger"]["trainable"] == summary["merger"]["total"]


def test_dora_adapter(tiny_model_dir, data, tmp_path, capsys):
    out = tmp_path / "dora"
    rc, err = train(capsys, tiny_model_dir("qwen2.5-vl"), data, out, "max_steps=2", "use_dora=true", "lora_r=8")
    assert rc == 0, err[-2000:]
    assert json.loads((out / "final" / "adapter_config.json").read_text())["use_dora"] is True
    mags = [k for k in adapter(out / "final") if "lora_magnitude_vector" in k]
    assert len(mags) == 2 * 7  # one magnitude vector per adapted LLM linear


def test_full_fine_tune_writes_full_weights(tiny_model_dir, data, tmp_path, capsys):
    base = tiny_model_dir("qwen3-vl")
    out = tmp_path / "full"
    rc, err = train(
        capsys, base, data, out, "max_steps=2", "tune_llm=full", "tune_vision=full", "tune_merger=full", "lr=1e-3"
    )
    assert rc == 0, err[-2000:]
    final = out / "final"
    assert (final / "model.safetensors").is_file() and not (final / "adapter_config.json").exists()
    tuned, ref = _model(final).state_dict(), _model(base).state_dict()
    fam = get_family("qwen3-vl")
    moved = {fam.part_of(k) for k in ref if not torch.equal(ref[k], tuned[k])}
    assert moved == {"vision", "merger", "llm"}  # embeddings / lm_head stayed (tune_embeddings=false)
    assert json.loads((out / "train_summary.json").read_text())["modules_to_save"] == []


@pytest.mark.parametrize("q", ["4bit", "8bit"])
def test_quantization_is_refused_without_bitsandbytes(tiny_model_dir, data, tmp_path, capsys, monkeypatch, q):
    """QLoRA runs on CPU too (tests/test_qlora.py); without the bitsandbytes package it is refused before anything is written."""
    import sys

    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # import bitsandbytes → ImportError
    rc, err = train(capsys, tiny_model_dir("qwen2-vl"), data, tmp_path / "q", f"quantization={q}")
    assert rc == 2 and f"quantization={q} needs bitsandbytes" in err and "pip install bitsandbytes" in err
    assert "Traceback" not in err and not (tmp_path / "q").exists()


def test_liger_and_fp16_are_refused_without_cuda(tiny_model_dir, data, tmp_path, capsys):
    if torch.cuda.is_available():  # pragma: no cover
        pytest.skip("a CUDA device is present")
    rc, err = train(capsys, tiny_model_dir("qwen2-vl"), data, tmp_path / "l", "use_liger=true")
    assert rc == 2 and "use_liger" in err and "CUDA" in err and "Traceback" not in err
    rc, err = train(capsys, tiny_model_dir("qwen2-vl"), data, tmp_path / "f", "precision=fp16")
    assert rc == 2 and "precision=fp16" in err and "precision=auto" in err
    assert not (tmp_path / "l").exists() and not (tmp_path / "f").exists()


def test_adapter_file_holds_modules_to_save(tiny_model_dir, data, tmp_path, capsys):
    out = tmp_path / "mts"
    rc, err = train(capsys, tiny_model_dir("qwen2-vl"), data, out, "max_steps=1", "tune_embeddings=true")
    assert rc == 0, err[-2000:]
    keys = set(load_file(str(out / "final" / "adapter_model.safetensors")))
    assert any(k.endswith("visual.merger.mlp.0.weight") for k in keys)
    assert any("embed_tokens" in k for k in keys) and any("lm_head" in k for k in keys)
