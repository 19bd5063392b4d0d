"""``share_prompts=true`` (geovl/train/shared_rollout.py) against the unshared path, for each tiny family: with the
same seed the completions, rewards, advantages and the first optimizer step are equal (within float tolerance),
while the vision tower encodes each group's image once (rollout and loss forward) instead of G times and the
prompt is prefilled once per group (counted with forward hooks). Settings that cannot share are refused."""

from __future__ import annotations

import re

import pytest
import torch

from conftest import TINY_FAMILIES
from geovl.data.schema import make_sample
from sft_util import png, write_dataset

G = 4  # completions per prompt; 2 prompts per step
COMPLETION = 6
# a reward with signal on an untrained model (the rule rewards are ~0 on junk text), so advantages are non-zero
PLUGIN = """
def variety_reward(completions, **kwargs):
    return [len(set(c[0]["content"])) / 10 for c in completions]
"""


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("grpo-shared")
    samples = [  # two prompts, different image sizes (their padded lengths differ) and questions
        make_sample("a", "How many buildings are in the image?", "3", [png(56, 84, 1)], qtype="count"),
        make_sample("b", "图中是否有水体？", "是", [png(84, 56, 2)], qtype="yes_no"),
    ]
    plugin = root / "variety.py"
    plugin.write_text(PLUGIN)
    return {"data": write_dataset(root / "train.parquet", samples), "plugin": plugin}


def _hooks(monkeypatch):
    """Record the vision tower's images and the LLM's input shapes per phase, and what each generation step
    returned, by wrapping the trainer's methods (observation only: the wrapped methods run unchanged)."""
    from trl import GRPOTrainer

    from geovl.train.grpo_trainer import GeoVLGRPOTrainer

    rec = {"phase": "loss", "vision": {"rollout": [], "loss": []}, "llm": {"rollout": [], "loss": []}, "out": []}
    vision_re, text_re = re.compile(r"Vision(?:Transformer)?(?:Pretrained)?Model$"), re.compile(r"TextModel$")

    def post(module, args, kwargs, output):
        name = type(module).__name__
        if vision_re.search(name):
            grid = kwargs.get("grid_thw", args[1] if len(args) > 1 else None)
            rec["vision"][rec["phase"]].append(int(grid.shape[0]))
        elif text_re.search(name):
            x = kwargs.get("inputs_embeds")
            rec["llm"][rec["phase"]].append(tuple(x.shape[:2]))

    orig_generate = GRPOTrainer._generate

    def generate(self, prompts):
        rec["phase"] = "rollout"
        try:
            return orig_generate(self, prompts)
        finally:
            rec["phase"] = "loss"

    orig_score = GeoVLGRPOTrainer._generate_and_score_completions

    def score(self, inputs):
        out = orig_score(self, inputs)
        rec["out"].append({k: out[k].detach().clone() for k in ("completion_ids", "advantages", "prompt_ids")})
        rec["rewards"] = self._metrics["train"]
        return out

    orig_rewards = GRPOTrainer._calculate_rewards

    def rewards(self, *a, **k):
        r = orig_rewards(self, *a, **k)
        rec["reward_rows"] = r.detach().clone()
        return r

    monkeypatch.setattr(GRPOTrainer, "_generate", generate)
    monkeypatch.setattr(GeoVLGRPOTrainer, "_generate_and_score_completions", score)
    monkeypatch.setattr(GRPOTrainer, "_calculate_rewards", rewards)
    handle = torch.nn.modules.module.register_module_forward_hook(post, with_kwargs=True)
    return rec, handle


def _train(model, files, out, share: bool, extra: list[str]):
    from geovl.train.grpo import GRPORecipe, train_grpo
    from geovl.train.recipe import load_recipe

    recipe = load_recipe(None, [
        f"model={model}", f"train_data={files['data']}", f"output_dir={out}", f"reward_file={files['plugin']}",
        "reward_funcs=[rs_reward]", "max_steps=1", f"batch_size={2 * G}", f"num_generations={G}",
        f"max_completion_length={COMPLETION}", "temperature=1.0", "lr=1e-3", "seed=5", "report_to=[]",
        "progress_bar=false", "logging_steps=1", "save_steps=100", f"share_prompts={str(share).lower()}", *extra,
    ], GRPORecipe)  # fmt: skip
    return train_grpo(recipe)


def _weights(folder) -> dict:
    from safetensors.torch import load_file

    name = "adapter_model.safetensors" if (folder / "adapter_model.safetensors").exists() else "model.safetensors"
    return load_file(str(folder / name))


# qwen2-vl: the recipe defaults (LoRA on the LLM, trainable merger, frozen vision tower) with eager attention (the
# others: the default sdpa); the others train every
# part, so the shared image features carry the vision tower's gradients (Qwen3-VL: its deepstack features too)
SETUP = {
    "qwen2-vl": [],
    "qwen2.5-vl": ["tune_llm=full", "tune_vision=full"],
    "qwen3-vl": ["tune_llm=full", "tune_vision=full"],
}


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_shared_rollouts_equal_unshared_with_1_over_g_of_the_work(family, files, tiny_model_dir, tmp_path, monkeypatch):
    import json

    model = tiny_model_dir(family)
    runs = {}
    for share in (False, True):
        with monkeypatch.context() as mp:
            rec, handle = _hooks(mp)
            try:
                final = _train(model, files, tmp_path / f"share-{share}", share, SETUP[family])
            finally:
                handle.remove()
        rec["final"] = _weights(final)
        rec["summary"] = json.loads((final.parent / "train_summary.json").read_text())
        runs[share] = rec
    plain, shared = runs[False], runs[True]

    # the same completions (sampled at temperature 1 with the same seed), rewards and advantages
    (a,), (b,) = plain["out"], shared["out"]
    assert torch.equal(a["completion_ids"], b["completion_ids"])
    assert torch.equal(a["prompt_ids"], b["prompt_ids"])
    assert torch.allclose(plain["reward_rows"], shared["reward_rows"], atol=1e-6)
    assert plain["reward_rows"][:, 1].std() > 0  # the variety reward has signal: the step is not a no-op
    assert torch.allclose(a["advantages"], b["advantages"], atol=1e-5)
    assert a["advantages"].abs().max() > 0

    # the first optimizer step: the same weights within float tolerance, and they moved from the start
    start = _weights(model) if family != "qwen2-vl" else None
    for k, v in plain["final"].items():
        assert torch.allclose(v, shared["final"][k], atol=1e-5, rtol=1e-4), (k, (v - shared["final"][k]).abs().max())
    if start is not None:
        moved = [k for k in start if k in plain["final"] and not torch.equal(start[k], plain["final"][k])]
        assert any("visual" in k and "merger" not in k for k in moved)  # the vision tower trained too
    else:  # the adapter: LoRA B matrices start at zero; the merger is saved whole (modules_to_save)
        assert any(v.abs().max() > 0 for k, v in plain["final"].items() if "lora_B" in k)
        base = _weights(model)
        merger = {k.split("merger.", 1)[1]: v for k, v in plain["final"].items() if "merger." in k}
        assert merger and any(
            not torch.equal(v, bv) for t, v in merger.items() for bk, bv in base.items() if bk.endswith("merger." + t)
        )  # the merger trained through the shared image features

    # exact counts: rollouts encode each group's image once (2 groups: 2 images, not 2 × G) in one call ...
    assert plain["vision"]["rollout"] == [2 * G] and shared["vision"]["rollout"] == [2]
    # ... and prefill each prompt once: the distinct prompts without their last token, every row's last prompt
    # token runs in the first decoding step (one more single-token forward than the unshared path)
    (pb, plen), *p_rest = plain["llm"]["rollout"]
    (sb, slen), *s_rest = shared["llm"]["rollout"]
    assert (pb, sb) == (2 * G, 2) and slen == plen - 1
    assert p_rest and all(shape == (2 * G, 1) for shape in p_rest + s_rest)
    assert len(s_rest) == len(p_rest) + 1
    assert sb * slen * G == pb * (plen - 1)  # prefill positions per group: 1/G of the unshared path's (less 1 token)
    # the loss forward: one vision call over the 2 distinct images instead of all 2 × G
    assert plain["vision"]["loss"] == [2 * G] and shared["vision"]["loss"] == [2]
    assert plain["llm"]["loss"] == shared["llm"]["loss"] == [(2 * G, plen + a["completion_ids"].shape[1])]
    assert shared["summary"]["share_counts"] == {
        "rows": 2 * G,
        "distinct": 2,
        "loss_images": 2 * G,
        "loss_images_encoded": 2,
    }
    assert plain["summary"]["share_counts"] is None


def test_distinct_prompts_and_images_are_found_exactly():
    from PIL import Image

    from geovl.train.shared_rollout import distinct_images, group_prompts

    img = Image.new("RGB", (8, 8), (10, 20, 30))
    same = Image.new("RGB", (8, 8), (10, 20, 30))  # another object, the same pixels
    other = Image.new("RGB", (8, 8), (10, 20, 31))  # one channel value differs

    def prompt(text, image):
        return [{"role": "user", "content": [{"type": "image", "image": image}, {"type": "text", "text": text}]}]

    rows = [prompt("q", img), prompt("q", same), prompt("q", other), prompt("Q", img), prompt("q", img)]
    assert group_prompts(rows) == ([0, 2, 3], [0, 0, 1, 2, 0])

    grid = torch.tensor([[1, 2, 2], [1, 2, 2], [1, 2, 4], [1, 2, 2]])
    a, b = torch.rand(4, 6), torch.rand(8, 6)
    c = a.clone()
    c[3, 5] += 1e-6  # the same sum up to rounding, different pixels
    pv = torch.cat([a, a.clone(), b, c])
    assert distinct_images(pv, grid) == ([0, 2, 3], [0, 0, 1, 2])


@pytest.mark.parametrize(
    "extra, missing",
    [
        (["use_vllm=true"], "share_prompts=true cannot be used with use_vllm=true"),
        (["cache_implementation=static"], "cache_implementation=static"),
        (["attn_implementation=flex_attention"], "attn_implementation=flex_attention"),
        (["attn_implementation=flash_attention_2"], "accepted: eager, sdpa"),
        (["use_transformers_continuous_batching=true"], "use_transformers_continuous_batching=true"),
    ],
)
def test_share_prompts_refuses_what_cannot_share(extra, missing, files, tiny_model_dir, tmp_path, capsys):
    from sft_util import run_cli

    recipe = tmp_path / "r.yaml"
    recipe.write_text("reward_funcs: [rs_reward]\nreport_to: []\n")
    rc, err = run_cli(
        capsys, "train", "grpo", recipe, f"model={tiny_model_dir('qwen2.5-vl')}", f"train_data={files['data']}",
        f"output_dir={tmp_path / 'out'}", "share_prompts=true", f"num_generations={G}", f"batch_size={G}", *extra,
    )  # fmt: skip
    assert rc == 2 and missing in err and "share_prompts=false" in err, err[-2000:]
    assert not (tmp_path / "out" / "final").exists()


@pytest.mark.slow
def test_two_rank_ddp_shared_equals_unshared(files, tiny_model_dir, tmp_path):
    """``torchrun --nproc_per_node 2`` (gloo, CPU): each rank holds one group of the step; the shared run's weights
    and reward means equal the unshared run's (the loss forward's vision call on the unwrapped model still
    gets its gradients all-reduced)."""
    import json
    import os
    import signal
    import socket
    import subprocess
    import sys
    from pathlib import Path

    from safetensors.torch import load_file

    recipe = tmp_path / "r.yaml"
    recipe.write_text("reward_funcs: [rs_reward]\nreport_to: []\n")
    finals = {}
    for share in ("false", "true"):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        out = tmp_path / f"ddp-{share}"
        cmd = [
            str(Path(sys.executable).with_name("torchrun")), "--nproc_per_node", "2", "--master_port", str(port), "-m",
            "geovl", "train", "grpo", str(recipe), f"model={tiny_model_dir('qwen2.5-vl')}", f"train_data={files['data']}",
            f"output_dir={out}", f"reward_file={files['plugin']}", "max_steps=1", f"batch_size={G}",
            f"num_generations={G}", f"max_completion_length={COMPLETION}", "temperature=1.0", "lr=1e-3", "seed=5",
            "progress_bar=false", "logging_steps=1", "save_steps=100", "tune_llm=full", "tune_vision=full",
            f"share_prompts={share}",
        ]  # fmt: skip
        proc = subprocess.Popen(
            cmd, env=dict(os.environ, OMP_NUM_THREADS="1"), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            start_new_session=True,
        )  # fmt: skip
        try:
            _, err = proc.communicate(timeout=300)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            _, err = proc.communicate()
            pytest.fail(f"torchrun did not finish within 300 s (ranks killed):\n{err[-3000:]}")
        assert proc.returncode == 0, err[-4000:]
        summary = json.loads((out / "train_summary.json").read_text())
        assert summary["world_size"] == 2 and summary["steps"] == 1
        finals[share] = (load_file(str(out / "final" / "model.safetensors")), summary)
    (a, sa), (b, sb) = finals["false"], finals["true"]
    assert sb["share_counts"] == {"rows": G, "distinct": 1, "loss_images": G, "loss_images_encoded": 1}  # rank 0
    ra, rb = sa["reward_means_first_last"], sb["reward_means_first_last"]
    assert ra.keys() == rb.keys() and all(ra[k] == pytest.approx(rb[k], abs=1e-6) for k in ra)
    start = load_file(str(tiny_model_dir("qwen2.5-vl") / "model.safetensors"))
    assert any(not torch.equal(start[k], a[k]) for k in a if "visual.blocks" in k)
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-5, rtol=1e-4), (k, (a[k] - b[k]).abs().max())
