"""``geovl train grpo`` on each tiny family: trains, logs per-reward means, saves a loadable
``OUT/final``, resumes from a checkpoint; images reach the vision tower; prompts over
``max_prompt_length`` are dropped whole and counted; an SFT LoRA adapter continues training."""

from __future__ import annotations

import json
import re
import shutil

import pytest
import torch

from conftest import TINY_FAMILIES
from geovl.data.schema import make_sample
from sft_util import FAST, png, progress, run_cli, write_dataset

# a reward with signal on an untrained model: sampled completions differ in length, so the group
# advantages are non-zero and the weights move (the rule rewards are all 0 on junk text)
PLUGIN = """
def length_reward(completions, **kwargs):
    return [min(1.0, len(c[0]["content"]) / 24) for c in completions]
"""
QUESTIONS = [
    ("How many buildings are in the image?", "3", "count", {}),
    ("耕地面积约为多少公顷？", "12.34公顷", "area", {"gt": {"m2": 123400.0}}),
    ("Is there water in the image?", "yes", "yes_no", {}),
    ("图中有多少栋建筑？", "5", "count", {}),
]
MAX_PROMPT = 64  # the 56 px prompts are 32-35 tokens; a 224 px image alone is 64 visual tokens
GRPO_FAST = [*FAST, "num_generations=2", "max_completion_length=4", "save_steps=1", "lr=1e-3", "max_steps=2"]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("grpo")
    samples = []
    for i in range(8):
        q, a, t, meta = QUESTIONS[i % len(QUESTIONS)]
        samples.append(make_sample(f"s{i}", q, a, [png(56, 56 + 28 * (i % 2), i)], qtype=t, meta=meta))
    samples += [
        make_sample(f"big{i}", "How many buildings?", "2", [png(224, 224, 50 + i)], qtype="count") for i in range(2)
    ]
    data = write_dataset(root / "train.parquet", samples)
    plugin = root / "len_rewards.py"
    plugin.write_text(PLUGIN)
    recipe = root / "grpo.yaml"
    recipe.write_text("reward_funcs: [rs_reward]\nreport_to: []\n")
    return {"data": data, "plugin": plugin, "recipe": recipe, "root": root}


def _weights(folder) -> dict:
    from safetensors.torch import load_file

    name = "adapter_model.safetensors" if (folder / "adapter_model.safetensors").exists() else "model.safetensors"
    return load_file(str(folder / name))


def _differs(a: dict, b: dict) -> bool:
    return any(not torch.equal(a[k], b[k]) for k in a if k in b)


class VisionCalls:
    """A global forward hook recording the image grids the vision tower of any loaded model sees."""

    NAME = re.compile(r"Vision(?:Transformer)?(?:Pretrained)?Model$")

    def __enter__(self):
        self.images = []
        self.handle = torch.nn.modules.module.register_module_forward_hook(self._hook, with_kwargs=True)
        return self

    def _hook(self, module, args, kwargs, output):
        if self.NAME.search(type(module).__name__):
            grid = kwargs.get("grid_thw", args[1] if len(args) > 1 else None)
            self.images.append(int(grid.shape[0]) if grid is not None else 0)

    def __exit__(self, *exc):
        self.handle.remove()


def _grpo(capsys, files, model, out, *extra, resume=False):
    args = [
        "train",
        "grpo",
        files["recipe"],
        f"model={model}",
        f"train_data={files['data']}",
        f"output_dir={out}",
        f"reward_file={files['plugin']}",
        f"max_prompt_length={MAX_PROMPT}",
        *GRPO_FAST,
        *extra,
    ]
    if resume:
        args.append("--resume")
    return run_cli(capsys, *args)


def _start(capsys, family, tiny_model_dir, tmp_path):
    """(model folder to start GRPO from, extra overrides): a different starting point per family."""
    base = tiny_model_dir(family)
    if family == "qwen2-vl":  # an SFT LoRA run's final/ adapter continues training
        sft = tmp_path / "sft"
        rc, err = run_cli(
            capsys,
            "train",
            "sft",
            files_recipe(tmp_path),
            f"model={base}",
            f"train_data={_sft_data(tmp_path)}",
            f"output_dir={sft}",
            "max_steps=1",
            *FAST,
        )
        assert rc == 0, err[-2000:]
        return sft / "final", []
    if family == "qwen2.5-vl":  # full fine-tuning of the LLM + merger (checkpoint key layout ≠ module tree: issue 21)
        return base, ["tune_llm=full", "tune_merger=full"]
    return base, []  # LoRA on the LLM, trainable merger (the recipe defaults)


def files_recipe(tmp_path):
    p = tmp_path / "sft.yaml"
    p.write_text("{}\n")
    return p


def _sft_data(tmp_path):
    return write_dataset(
        tmp_path / "sft.parquet",
        [make_sample(f"t{i}", "How many buildings?", str(i), [png(56, 56, i)], qtype="count") for i in range(4)],
    )


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_grpo_trains_saves_resumes_and_reloads(family, files, tiny_model_dir, tmp_path, capsys):
    from geovl.inference import ChatRequest, GenerationParams, LocalEngine

    start, extra = _start(capsys, family, tiny_model_dir, tmp_path)
    out = tmp_path / "run"
    with VisionCalls() as vision:
        rc, err = _grpo(capsys, files, start, out, *extra)
    assert rc == 0, err[-3000:]

    # images reached the vision tower: every call saw images, at least one per completion per pass
    assert vision.images and min(vision.images) > 0
    assert sum(vision.images) >= 2 * 2 * 2  # 2 steps × 2 completions × (generation + loss forward)

    # prompts over max_prompt_length: dropped whole, counted, listed with the reason
    summary = json.loads((out / "train_summary.json").read_text())
    assert summary["prompts"]["read"] == 10 and summary["prompts"]["kept"] == 8
    assert summary["prompts"]["dropped_by_reason"] == {"over_max_prompt_length": 2}
    dropped = [json.loads(line) for line in (out / "dropped.jsonl").read_text().splitlines()]
    assert sorted(d["id"] for d in dropped) == ["big0", "big1"] and "> max_prompt_length=64" in dropped[0]["detail"]
    assert summary["steps"] == 2 and summary["rewards"] == {"rs_reward": 1.0, "length_reward": 1.0}

    # progress: one line per step with the per-reward means TRL logs
    steps = [p for p in progress(out) if "loss" in p]
    assert [p["step"] for p in steps] == [1, 2]
    assert all("rewards/length_reward/mean" in p and "reward" in p for p in steps)
    assert any(p["grad_norm"] > 0 for p in steps)

    # self-contained checkpoints and final; the weights moved
    for folder in (out / "checkpoint-1", out / "checkpoint-2", out / "final"):
        assert (folder / "geovl_preprocess.json").is_file() and (folder / "tokenizer_config.json").is_file()
    final = _weights(out / "final")
    assert _differs(final, _weights(out / "checkpoint-1"))
    if family == "qwen2-vl":
        cfg = json.loads((out / "final" / "adapter_config.json").read_text())
        assert cfg["base_model_name_or_path"] == str(tiny_model_dir(family))
        assert _differs(final, _weights(start)) and "continuing to train the LoRA adapter" in err
    if family == "qwen2.5-vl":
        assert (out / "final" / "config.json").is_file() and _differs(final, _weights(start))

    # interrupted after checkpoint-1: refused without --resume, then resumed to the same result
    shutil.rmtree(out / "checkpoint-2")
    shutil.rmtree(out / "final")
    rc, err = _grpo(capsys, files, start, out, *extra)
    assert rc == 2 and "unfinished run (checkpoint-1)" in err
    rc, err = _grpo(capsys, files, start, out, *extra, resume=True)
    assert rc == 0, err[-3000:]
    assert "resuming from" in err and "checkpoint-1" in err
    assert json.loads((out / "train_summary.json").read_text())["steps"] == 2
    resumed = _weights(out / "final")
    assert not _differs(resumed, final), max((resumed[k] - final[k]).abs().max().item() for k in final)  # exact

    # the result loads for inference (geovl eval / serve use this engine) and generates
    engine = LocalEngine(str(out / "final"))
    req = ChatRequest(
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "How many buildings?"}]}],
        [png(56, 56, 7)],
    )
    answers = engine.generate([req], GenerationParams(max_new_tokens=4))
    assert len(answers) == 1 and isinstance(answers[0], str)
    engine.close()


def test_prompt_lengths_are_exact_and_rows_carry_the_reward_columns(files, tiny_model_dir):
    from geovl.models.loading import load_processor
    from geovl.models.preprocess import PreprocessConfig
    from geovl.models.registry import get_family
    from geovl.train.grpo_data import GRPOPrompts

    folder = tiny_model_dir("qwen2.5-vl")
    proc = load_processor(folder)
    lo, hi = PreprocessConfig.bounds_of(proc)
    prompts = GRPOPrompts([files["data"]], proc, get_family("qwen2.5-vl"), None, None, lo, hi, progress=False)
    assert len(prompts) == 10 and prompts.summary()["dropped"] == 0
    ds = prompts.to_dataset()
    for i in (0, 1, 8):
        row = ds[i]
        text = proc.apply_chat_template(row["prompt"], tokenize=False, add_generation_prompt=True)
        enc = proc(text=[text], images=row["images"], return_tensors="pt")
        assert enc["input_ids"].shape[1] == prompts.lengths[i]
        assert set(row) >= {"prompt", "images", "answer", "qtype", "question", "meta", "id"}
        assert row["prompt"][-1]["role"] == "user" and row["answer"] == files_answer(row["id"])
    assert ds[1]["meta"] == {"gt": {"m2": 123400.0}} and ds[1]["question"] == "耕地面积约为多少公顷？"


def files_answer(sid: str) -> str:
    if sid.startswith("big"):
        return "2"
    return QUESTIONS[int(sid[1:]) % len(QUESTIONS)][1]


def test_grpo_refuses_bad_settings_before_loading(files, tiny_model_dir, tmp_path, capsys):
    model = tiny_model_dir("qwen2.5-vl")
    rc, err = _grpo(capsys, files, model, tmp_path / "a", "num_generations=1")
    assert rc == 2 and "num_generations must be at least 2" in err
    rc, err = _grpo(capsys, files, model, tmp_path / "b", "use_vllm=true")
    assert rc == 2 and "vllm" in err
    rc, err = _grpo(capsys, files, model, tmp_path / "c", "max_prompt_length=8")
    assert rc == 2 and "no usable prompts" in err and "over_max_prompt_length" in err
