"""Recipes (TRL SFTConfig / GRPOConfig subclasses): YAML + key=value overrides, every upstream field reachable,
geovl's short names, refused keys/values, shipped recipes, DeepSpeed/FSDP short names, the saved recipe."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import re
from pathlib import Path

import pytest
import torch
import yaml
from transformers import TrainingArguments
from trl import GRPOConfig, SFTConfig

from geovl.train.recipe import (
    ALIASES,
    CHOICES,
    GRPORecipe,
    RecipeError,
    SFTRecipe,
    load_recipe,
    parse_overrides,
    save_recipe,
)
from sft_util import run_cli, sft_recipes

ROOT = Path(__file__).resolve().parents[1]
RECIPES = sft_recipes()  # every recipes/*.yaml but the GRPO ones
DEEPSPEED = ROOT / "recipes" / "deepspeed"
REQUIRED = ["model=m", "train_data=d.parquet"]


def test_overrides_are_yaml_scalars_and_lists():
    o = parse_overrides(
        ["lr=2e-5", "train_data=[a.parquet,b.parquet]", "eval_data=null", "report_to=", "tune_llm=full"]
    )
    assert o == {
        "lr": "2e-5",
        "train_data": ["a.parquet", "b.parquet"],
        "eval_data": None,
        "report_to": None,
        "tune_llm": "full",
    }
    r = load_recipe(
        None, REQUIRED + ["lr=2e-5", "max_steps=6", "report_to=tensorboard", "gradient_checkpointing=yes", "epochs=2"]
    )
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
        (
            "bach_size=4",
            ["unknown recipe key", "'bach_size'", "did you mean 'batch_size'", "Valid keys:", "lora_alpha"],
        ),
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


def test_every_geovl_key_and_short_name_is_listed_and_choices_exist():
    with pytest.raises(RecipeError) as e:
        load_recipe(None, REQUIRED + ["nonsense=1"])
    listed = str(e.value).split("Valid keys:")[1]
    assert "trl.SFTConfig" in listed and "TrainingArguments" in listed
    upstream = {f.name for f in dataclasses.fields(SFTConfig)}
    for f in dataclasses.fields(SFTRecipe):
        if f.name not in upstream:
            assert re.search(rf"\b{f.name}\b", listed), f.name
    for k in ALIASES:
        assert re.search(rf"\b{k}\b", listed), k
    for k in CHOICES:
        assert k in {f.name for f in dataclasses.fields(SFTRecipe)}


@pytest.mark.parametrize("cls", [SFTRecipe, GRPORecipe])
def test_recipes_are_trl_configs_sharing_one_copy_of_geovl_fields(cls):
    from geovl.train.recipe import GeoVLOptions

    upstream = SFTConfig if cls is SFTRecipe else GRPOConfig
    assert issubclass(cls, upstream) and issubclass(cls, GeoVLOptions)
    own = {f.name for f in dataclasses.fields(GeoVLOptions)}
    # the geovl fields are declared once, in GeoVLOptions; a subclass adds its own and may only change a default
    declared = cls.__dict__.get("__annotations__", {})
    shared = GeoVLOptions.__annotations__
    assert all(declared[k] == shared[k] for k in set(declared) & own), set(declared) & own
    assert len(set(declared) & own) <= 1


def test_upstream_knobs_reach_the_training_arguments():
    r = load_recipe(None, REQUIRED + [
        "max_grad_norm=0.3", "optim=adamw_torch", "adam_beta1=0.8", "adam_beta2=0.95", "lr_scheduler_type=cosine_with_min_lr",
        "lr_scheduler_kwargs={min_lr: 1.0e-6}", "per_device_eval_batch_size=2", "torch_compile=false", "dataloader_drop_last=true",
        "ddp_find_unused_parameters=false", "logging_first_step=false", "remove_unused_columns=true", "data_seed=7",
    ])  # fmt: skip
    assert isinstance(r, TrainingArguments)
    assert (r.max_grad_norm, r.optim.value, r.adam_beta1, r.adam_beta2) == (0.3, "adamw_torch", 0.8, 0.95)
    assert r.lr_scheduler_type.value == "cosine_with_min_lr" and r.lr_scheduler_kwargs == {"min_lr": 1e-6}
    assert (r.per_device_eval_batch_size, r.dataloader_drop_last, r.data_seed) == (2, True, 7)
    # nothing geovl sets is forced: the user's value wins
    assert r.ddp_find_unused_parameters is False and r.logging_first_step is False and r.remove_unused_columns is True
    from geovl.train.sft import trainer_args

    assert trainer_args(r, {"llm": (5, 10), "merger": (3, 3)}).ddp_find_unused_parameters is False
    # left out: derived from what trains (a trainable merger may get no gradient on a text-only batch)
    d = load_recipe(None, REQUIRED)
    assert d.ddp_find_unused_parameters is None
    assert trainer_args(d, {"llm": (5, 10), "merger": (3, 3)}).ddp_find_unused_parameters is True
    assert trainer_args(d, {"llm": (5, 10), "merger": (0, 3), "vision": (0, 9)}).ddp_find_unused_parameters is False
    assert d.ddp_find_unused_parameters is None  # the recipe keeps the user's (absent) value
    # geovl's derived defaults
    assert (d.per_device_eval_batch_size, d.data_seed, d.logging_first_step, d.remove_unused_columns) == (
        4,
        42,
        True,
        False,
    )
    assert d.use_cpu is (not torch.cuda.is_available()) and d.bf16 is False and d.fp16 is False
    e = load_recipe(None, REQUIRED + ["eval_data=e.parquet", "save_steps=50"])
    assert e.eval_strategy.value == "steps" and e.eval_steps == 50


def test_short_names_mean_the_upstream_fields():
    short = load_recipe(None, REQUIRED + ["lr=2e-5", "epochs=3", "batch_size=2", "grad_accum=8", "lr_scheduler=linear",
                                          "warmup_ratio=0.1", "num_workers=1", "progress_bar=false", "group_by_length=false",
                                          "gradient_checkpointing=true"])  # fmt: skip
    long = load_recipe(None, REQUIRED + ["learning_rate=2e-5", "num_train_epochs=3", "per_device_train_batch_size=2",
                                         "gradient_accumulation_steps=8", "lr_scheduler_type=linear", "warmup_steps=0.1",
                                         "dataloader_num_workers=1", "disable_tqdm=true", "train_sampling_strategy=random",
                                         "activation_checkpointing=true"])  # fmt: skip
    assert short == long
    assert (short.lr, short.epochs, short.batch_size, short.grad_accum, short.lr_scheduler) == (
        2e-5,
        3.0,
        2,
        8,
        "linear",
    )
    assert short.activation_checkpointing is True and short.gradient_checkpointing is True
    assert short.activation_checkpointing_kwargs == {"use_reentrant": False}
    with pytest.raises(RecipeError, match="both 'lr' and 'learning_rate'"):
        load_recipe(None, REQUIRED + ["lr=1e-4", "learning_rate=2e-4"])


@pytest.mark.parametrize(
    "override, words",
    [
        ("max_grad_nrom=1", ["unknown recipe key", "did you mean 'max_grad_norm'"]),
        ("learning_rat=1e-4", ["did you mean 'learning_rate'"]),
        ("optim=sgd_fast", ["optim", "'sgd_fast'", "adamw_torch"]),
        ("max_grad_norm=big", ["max_grad_norm", "expected a number"]),
        ("warmup_ratio=-0.5", ["warmup", "[0, 1)"]),
        ("per_device_train_batch_size=0", ["at least 1"]),
    ],
)
def test_upstream_keys_and_values_are_checked(override, words):
    with pytest.raises(RecipeError) as e:
        load_recipe(None, REQUIRED + [override])
    for w in words:
        assert w in str(e.value), (w, str(e.value))


def test_deepspeed_and_fsdp_short_names(tmp_path, monkeypatch):
    import geovl.train.recipe as rmod

    if importlib.util.find_spec("deepspeed") is not None:
        r = load_recipe(None, REQUIRED + ["deepspeed=zero2"])
        assert Path(r.deepspeed) == DEEPSPEED / "zero2.json"
        assert r.hf_deepspeed_config.config["zero_optimization"]["stage"] == 2
        saved = yaml.safe_load(save_recipe(r, tmp_path / "ds").read_text())
        assert saved["deepspeed"] == "zero2"  # by name: the saved recipe works in another checkout
        assert load_recipe(tmp_path / "ds" / "recipe.yaml") == r
    with pytest.raises(RecipeError) as e:
        load_recipe(None, REQUIRED + ["deepspeed=zero9"])
    assert "zero9" in str(e.value) and "zero3_offload" in str(e.value)
    with pytest.raises(RecipeError) as e:
        load_recipe(None, REQUIRED + [f"deepspeed={tmp_path / 'nope.json'}"])
    assert "config file not found" in str(e.value) and "zero2.json" in str(e.value)
    (tmp_path / "bad.json").write_text("{stage: 3")
    with pytest.raises(RecipeError, match="not valid JSON"):
        load_recipe(None, REQUIRED + [f"deepspeed={tmp_path / 'bad.json'}"])
    # fsdp: NAME → recipes/fsdp/NAME.json|yaml (a stand-in shipped folder here)
    (tmp_path / "fsdp").mkdir()
    (tmp_path / "fsdp" / "tiny.yaml").write_text("version: 2\nauto_wrap_policy: TRANSFORMER_BASED_WRAP\n")
    monkeypatch.setattr(rmod, "recipes_dir", lambda: tmp_path)
    r = load_recipe(None, REQUIRED + ["fsdp=tiny"])
    assert (
        r.fsdp is True
        and r.fsdp_config["version"] == 2
        and r.fsdp_config["auto_wrap_policy"] == "TRANSFORMER_BASED_WRAP"
    )
    assert load_recipe(save_recipe(r, tmp_path / "saved")) == r
    with pytest.raises(RecipeError, match="tiny"):
        load_recipe(None, REQUIRED + ["fsdp=huge"])


def test_every_file_in_recipes_loads_and_its_saved_form_loads_back(tmp_path):
    files = sorted((ROOT / "recipes").glob("*.yaml"))
    assert len(files) >= 9
    for p in files:
        cls = GRPORecipe if p.stem.startswith("grpo") else SFTRecipe
        r = load_recipe(p, cls=cls)
        assert r.model and r.train_data, p
        assert load_recipe(save_recipe(r, tmp_path, name=f"{p.stem}.yaml"), cls=cls) == r, p


def test_grpo_recipe_keeps_its_reward_mapping_and_gives_trl_a_list(tmp_path):
    g = load_recipe(
        None, REQUIRED + ["reward_weights={count_reward: 2.0}", "num_generations=2", "batch_size=2"], GRPORecipe
    )
    assert isinstance(g, GRPOConfig) and g.reward_weights == {"count_reward": 2.0}
    assert (g.lr, g.lora_dropout, g.loss_type, g.max_completion_length) == (1e-5, 0.0, "dapo", 32)
    t = g.trainer_config([1.0, 2.0])
    assert t.reward_weights == [1.0, 2.0] and g.reward_weights == {"count_reward": 2.0}
    assert load_recipe(save_recipe(g, tmp_path), cls=GRPORecipe) == g
    with pytest.raises(RecipeError, match="num_generations must be at least 2"):
        load_recipe(None, REQUIRED + ["num_generations=1"], GRPORecipe)
    with pytest.raises(RecipeError, match="loss_type"):
        load_recipe(None, REQUIRED + ["loss_type=ppo"], GRPORecipe)


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


def test_machine_derived_values_are_not_saved_but_user_values_are(tmp_path):
    derived = yaml.safe_load(save_recipe(load_recipe(None, REQUIRED), tmp_path / "a").read_text())
    assert "use_cpu" not in derived and "bf16" not in derived and derived["fp16"] is False
    given = yaml.safe_load(
        save_recipe(load_recipe(None, REQUIRED + ["use_cpu=true", "bf16=false"]), tmp_path / "b").read_text()
    )
    assert given["use_cpu"] is True and given["bf16"] is False


def test_save_and_reload_is_identical(tmp_path):
    r = load_recipe(
        None, REQUIRED + ["lr=3e-4", "tune_vision=lora", "report_to=[]", "eval_data=e.parquet", "lr_merger=1e-5"]
    )
    p = save_recipe(r, tmp_path)
    assert load_recipe(p) == r
    assert yaml.safe_load(p.read_text())["tune_vision"] == "lora"


def test_cli_unknown_key_in_file_names_the_file(tmp_path, capsys):
    p = tmp_path / "bad.yaml"
    p.write_text("model: m\ntrain_data: [d.parquet]\nlearning_rat: 1e-4\n")
    rc, err = run_cli(capsys, "train", "sft", p)
    assert rc == 2
    assert str(p) in err and "'learning_rat'" in err and "did you mean 'learning_rate'" in err and "Valid keys:" in err
    assert "Traceback" not in err
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
    assert r.quantization == "none" and r.deepspeed is None and not r.use_liger_kernel, "GPU-only options are opt-in"
    assert r.fsdp in (None, False) and not r.fp16
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
    assert {
        "train_batch_size",
        "train_micro_batch_size_per_gpu",
        "gradient_accumulation_steps",
        "bf16.enabled",
    } <= _autos(cfg)
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
    rc, err = run_cli(
        capsys, "train", "sft", p, "model=m", "train_data=d.parquet", f"deepspeed={tmp_path / 'nope.json'}"
    )
    assert rc == 2 and "config file not found" in err and "zero2.json" in err
