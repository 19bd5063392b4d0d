"""Recipes: YAML + key=value overrides, refused keys/values, shipped recipes and DeepSpeed configs."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import re
from pathlib import Path

import pytest
import yaml
from sft_util import run_cli, sft_recipes

from geovl.train.recipe import CHOICES, RecipeError, SFTRecipe, load_recipe, parse_overrides, save_recipe

ROOT = Path(__file__).resolve().parents[1]
RECIPES = sft_recipes()  # every recipes/*.yaml but the GRPO ones
DEEPSPEED = ROOT / "recipes" / "deepspeed"
REQUIRED = ["model=m", "train_data=d.parquet"]


def test_overrides_are_yaml_scalars_and_lists():
    o = parse_overrides(["lr=2e-5", "train_data=[a.parquet,b.parquet]", "eval_data=null", "report_to=", "tune_llm=full"])
    assert o == {"lr": "2e-5", "train_data": ["a.parquet", "b.parquet"], "eval_data": None, "report_to": None, "tune_llm": "full"}
    r = load_recipe(None, REQUIRED + ["lr=2e-5", "max_steps=6", "report_to=tensorboard", "gradient_checkpointing=yes", "epochs=2"])
    assert (r.lr, r.max_steps, r.report_to, r.gradient_checkpointing, r.epochs) == (2e-5, 6, ["tensorboard"], True, 2.0)
    assert r.train_data == ["d.parquet"]  # a single file becomes a list


def test_file_then_command_line(tmp_path):
    p = tmp_path / "r.yaml"
    p.write_text("model: base\ntrain_data: [x.parquet]\nlr: 1.0e-3\nlora_r: 8\n")
    r = load_recipe(p, ["lora_r=4"])
    assert (r.model, r.lr, r.lora_r) == ("base", 1e-3, 4)


@pytest.mark.parametrize(
    "override, words",
    [
        ("bach_size=4", ["unknown recipe key", "'bach_size'", "did you mean 'batch_size'", "Valid keys:", "lora_alpha"]),
        ("batch_size=four", ["batch_size", "expected an integer", "'four'"]),
        ("max_steps=2.5", ["max_steps", "expected an integer"]),
        ("lr=fast", ["lr", "expected a number"]),
        ("gradient_checkpointing=maybe", ["gradient_checkpointing", "true/false"]),
        ("tune_llm=partial", ["tune_llm", "'partial'", "lora", "full", "freeze"]),
        ("lr_scheduler=exp", ["lr_scheduler", "cosine", "linear"]),
        ("quantization=2bit", ["quantization", "4bit", "8bit"]),
        ("precision=int8", ["precision", "auto", "bf16"]),
    ],
)
def test_bad_keys_and_values_are_refused(override, words):
    with pytest.raises(RecipeError) as e:
        load_recipe(None, REQUIRED + [override])
    for w in words:
        assert w in str(e.value), (w, str(e.value))


def test_every_valid_key_is_listed_and_choices_exist():
    with pytest.raises(RecipeError) as e:
        load_recipe(None, REQUIRED + ["nonsense=1"])
    listed = str(e.value).split("Valid keys:")[1]
    for f in dataclasses.fields(SFTRecipe):
        assert re.search(rf"\b{f.name}\b", listed), f.name
    for k in CHOICES:
        assert k in {f.name for f in dataclasses.fields(SFTRecipe)}


def test_required_keys_and_not_a_mapping(tmp_path):
    with pytest.raises(RecipeError, match="model is required"):
        load_recipe(None, ["train_data=d.parquet"])
    with pytest.raises(RecipeError, match="train_data is required"):
        load_recipe(None, ["model=m"])
    p = tmp_path / "list.yaml"
    p.write_text("- a\n- b\n")
    with pytest.raises(RecipeError, match="mapping"):
        load_recipe(p)
    with pytest.raises(RecipeError, match="not found"):
        load_recipe(tmp_path / "missing.yaml")
    with pytest.raises(RecipeError, match="not key=value"):
        load_recipe(None, ["lr"])


def test_save_and_reload_is_identical(tmp_path):
    r = load_recipe(None, REQUIRED + ["lr=3e-4", "tune_vision=lora", "report_to=[]", "eval_data=e.parquet", "lr_merger=1e-5"])
    p = save_recipe(r, tmp_path)
    assert load_recipe(p) == r
    assert yaml.safe_load(p.read_text())["tune_vision"] == "lora"


def test_cli_unknown_key_in_file_names_the_file(tmp_path, capsys):
    p = tmp_path / "bad.yaml"
    p.write_text("model: m\ntrain_data: [d.parquet]\nlearning_rate: 1e-4\n")
    rc, err = run_cli(capsys, "train", "sft", p)
    assert rc == 2
    assert str(p) in err and "'learning_rate'" in err and "Valid keys:" in err and "Traceback" not in err
    rc, err = run_cli(capsys, "train", "sft", p, "lr=1e-4", "max_stepz=3")
    assert rc == 2 and "command line" in err or str(p) in err


def test_cli_bad_value_and_choice(tmp_path, capsys):
    p = tmp_path / "r.yaml"
    p.write_text("model: m\ntrain_data: [d.parquet]\n")
    rc, err = run_cli(capsys, "train", "sft", p, "batch_size=lots")
    assert rc == 2 and "batch_size: expected an integer" in err
    rc, err = run_cli(capsys, "train", "sft", p, "tune_vision=half")
    assert rc == 2 and "tune_vision" in err and "'half'" in err


# -- shipped recipes ------------------------------------------------------------------------------


def test_the_seed_scenarios_are_shipped():
    names = {p.stem for p in RECIPES}
    assert {"landuse-county-qa", "rsvqa-lora", "building-defects", "tiny-cpu"} <= names


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.stem)
def test_shipped_recipe_parses_and_documents_its_memory(path):
    text = path.read_text(encoding="utf-8")
    header = text.split("\n\n")[0]
    assert header.startswith("#") and re.search(r"Memory", header), "comment header with the memory needed"
    r = load_recipe(path)
    assert r.precision == "auto", "GPU-only precision must come from precision: auto so the recipe also runs on CPU"
    assert r.quantization == "none" and r.deepspeed is None and not r.use_liger, "GPU-only options are opt-in"
    assert r.eval_data is None or Path(r.eval_data).suffix in (".parquet", ".jsonl")


def test_recipe_specifics():
    get = {p.stem: load_recipe(p) for p in RECIPES}
    county = get["landuse-county-qa"]
    assert "Qwen2.5-VL-3B" in county.model and (county.tune_llm, county.tune_merger) == ("lora", "full")
    rsvqa = get["rsvqa-lora"]
    assert rsvqa.tune_llm == "lora" and rsvqa.tune_vision == "lora"
    defects = get["building-defects"]
    assert "Qwen2.5-VL-7B" in defects.model
    assert "quantization: 4bit" in (RECIPES[0].parent / "building-defects.yaml").read_text()  # the QLoRA note
    assert get["tiny-cpu"].tune_llm == "full"
    for name in ("landuse-county-qa", "rsvqa-lora", "building-defects", "tiny-cpu"):
        r = get[name]
        assert r.max_pixels and r.max_visual_tokens and r.max_length and r.group_by_length, name


# -- DeepSpeed configs ----------------------------------------------------------------------------

# the keys transformers' HfTrainerDeepSpeedConfig fills from TrainingArguments when they are "auto"
HF_AUTO_KEYS = {
    "train_batch_size", "train_micro_batch_size_per_gpu", "gradient_accumulation_steps", "gradient_clipping",
    "fp16.enabled", "bf16.enabled", "zero_optimization.reduce_bucket_size",
    "zero_optimization.stage3_prefetch_bucket_size", "zero_optimization.stage3_param_persistence_threshold",
}  # fmt: skip


def _autos(d: dict, prefix: str = "") -> set[str]:
    out = set()
    for k, v in d.items():
        if isinstance(v, dict):
            out |= _autos(v, f"{prefix}{k}.")
        elif v == "auto":
            out.add(prefix + k)
    return out


@pytest.mark.parametrize("name, stage, offload", [("zero2", 2, False), ("zero3", 3, False), ("zero3_offload", 3, True)])
def test_deepspeed_configs(name, stage, offload):
    from geovl.train.trainer import deepspeed_offloads_optimizer

    cfg = json.loads((DEEPSPEED / f"{name}.json").read_text())
    z = cfg["zero_optimization"]
    assert z["stage"] == stage
    assert _autos(cfg) <= HF_AUTO_KEYS, _autos(cfg) - HF_AUTO_KEYS
    assert {"train_batch_size", "train_micro_batch_size_per_gpu", "gradient_accumulation_steps", "bf16.enabled"} <= _autos(cfg)
    # no optimizer/scheduler sections: the Trainer's optimizer (per-part learning rates) and schedule are used
    assert "optimizer" not in cfg and "scheduler" not in cfg and cfg["zero_allow_untested_optimizer"] is True
    assert deepspeed_offloads_optimizer(cfg) is offload
    if offload:
        assert z["offload_optimizer"]["device"] == "cpu" and z["offload_param"]["device"] == "cpu"
    if stage == 3:
        assert z["stage3_gather_16bit_weights_on_model_save"] is True  # save_model writes whole weights


@pytest.mark.skipif(importlib.util.find_spec("deepspeed") is not None, reason="deepspeed is installed here")
def test_deepspeed_without_the_package_is_a_clear_error(tiny_model_dir, tmp_path, capsys):
    p = tmp_path / "r.yaml"
    p.write_text("{}\n")
    rc, err = run_cli(
        capsys, "train", "sft", p, f"model={tiny_model_dir('qwen2-vl')}", "train_data=d.parquet",
        f"output_dir={tmp_path / 'out'}", f"deepspeed={DEEPSPEED / 'zero2.json'}",
    )  # fmt: skip
    assert rc == 2 and "deepspeed package is not installed" in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()
    rc, err = run_cli(capsys, "train", "sft", p, "model=m", "train_data=d.parquet", f"deepspeed={tmp_path / 'nope.json'}")
    assert rc == 2 and "config file not found" in err and "zero2.json" in err
