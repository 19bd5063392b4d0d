"""Sharded engines on the CPU, two processes (gloo): DeepSpeed ZeRO-2 / ZeRO-3 (``DS_ACCELERATOR=cpu``, launched with
torchrun and the shipped recipes/deepspeed/*.json), on the tiny Qwen2.5-VL and Qwen3-VL models.

Each SFT case trains 4 steps on batches that mix samples without images, with one and with two images, so that at
some step one rank's batch has no image while the other's has some (the ZeRO "hang" case: gloo aborts with a
collective mismatch without geovl.train.sharded) — the rank files prove it happened. Then:
- a copy of the run cut back to its step-2 checkpoint resumes from the ZeRO checkpoint and ends with exactly the
  uninterrupted run's final weights;
- LoRA: the final adapter merges (``geovl merge``) into a folder stock transformers loads, with the adapter's logits;
- full tuning: ``final/`` loads with stock transformers, and the weights consolidated from the step-4 shards
  (DeepSpeed's zero_to_fp32) equal it.
GRPO does the same on prompts without images, with one and with two (2 steps, resume from step 1, merge). A ZeRO-3 checkpoint resumed with another number of processes
is refused before anything is loaded, naming both sizes.

FSDP2 cannot shard on a CPU (accelerate enables it only on GPU-like devices and silently runs DDP otherwise): the
shipped recipes/fsdp/fsdp2.json is checked to become an FSDP2 plugin, and ``fsdp`` on a CPU is refused.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from sft_util import FAST, multi_turn_sample, qa_samples, run_cli, write_dataset

pytest.importorskip("deepspeed", reason="deepspeed is not installed (make install installs it)")

ROOT = Path(__file__).resolve().parents[1]
DS_CONFIGS = {"zero2": ROOT / "recipes/deepspeed/zero2.json", "zero3": ROOT / "recipes/deepspeed/zero3.json"}
FSDP_CONFIG = ROOT / "recipes/fsdp/fsdp2.json"
# batches in the file's order (ORDER): geovl's default length grouping (transformers' get_length_grouped_indices, one
# mega-batch sorted longest first) puts the four short text-only samples into the same steps on both ranks, and a
# random order leaves whether any step mixes to the seed
STEPS = [
    "max_steps=4",
    "save_steps=2",
    "lr=1e-2",
    "warmup_ratio=0",
    "save_total_limit=null",
    "train_sampling_strategy=sequential",
]
TUNING = {"lora": ["tune_merger=full"], "full": ["tune_llm=full", "tune_merger=full", "tune_vision=full", "lr=1e-3"]}
TIMEOUT = 300  # seconds per launch; a tiny run takes 30-90 s even on 2 busy cores


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env() -> dict:
    import geovl

    src = str(Path(geovl.__file__).parents[1])  # the geovl this test imports
    return dict(
        os.environ,
        PYTHONPATH=os.pathsep.join([src, os.environ.get("PYTHONPATH", "")]),
        DS_ACCELERATOR="cpu",
        OMP_NUM_THREADS="1",
        GEOVL_RANK_STATE="1",
    )


def launcher(engine: str, nproc: int = 2) -> list[str]:
    """The launch command line of an engine, up to the module to run."""
    bindir = Path(sys.executable).parent
    return [str(bindir / "torchrun"), "--nproc_per_node", str(nproc), "--master_port", str(_free_port()), "-m"]


def launch(engine: str, kind: str, args: list[str], nproc: int = 2) -> subprocess.CompletedProcess:
    cmd = [*launcher(engine, nproc), "geovl", "train", kind, *map(str, args), f"deepspeed={DS_CONFIGS[engine]}"]
    # its own process group: on a timeout the ranks die with the launcher (a hung rank must not outlive the test)
    proc = subprocess.Popen(
        cmd, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        out, err = proc.communicate(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"{' '.join(cmd[:6])} ... did not finish within {TIMEOUT} s (hung ranks killed):\n{err[-3000:]}")
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


IMAGES = {f"s{i}": 0 if i % 3 == 0 else 1 for i in range(10)} | {"mt0": 2, "mt1": 2}
# batches of 2, rank r gets the global batches r, r+2, ...: step 1 = rank 0 [s0 s3] (no image) | rank 1 [s1 s2] (2),
# step 2 = [mt0 s6] (2) | [s4 s9] (1), step 3 = [s5 s7] (2) | [mt1 s8] (3), step 4 = step 1 (second epoch)
ORDER = ["s0", "s3", "s1", "s2", "mt0", "s6", "s4", "s9", "s5", "s7", "mt1", "s8"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("sharded")
    samples = qa_samples(10) + [multi_turn_sample("mt0", 1), multi_turn_sample("mt1", 7)]
    assert {s["id"]: len(s["images"]) for s in samples} == IMAGES
    samples = sorted(samples, key=lambda s: ORDER.index(s["id"]))
    (root / "r.yaml").write_text("{}\n")
    return write_dataset(root / "mixed.parquet", samples), root / "r.yaml"


def _step_images(out: Path) -> list[tuple[int, int]]:
    """Per training step: (images in rank 0's batch, images in rank 1's batch), from the rank files."""
    ids = [json.loads((out / f"rank{r}.json").read_text())["sample_ids"] for r in (0, 1)]
    assert len(ids[0]) == len(ids[1]) == 4 * 2
    return [tuple(sum(IMAGES[i] for i in ids[r][k : k + 2]) for r in (0, 1)) for k in range(0, 8, 2)]


def _weights(folder: Path) -> dict:
    name = "adapter_model.safetensors" if (folder / "adapter_model.safetensors").is_file() else "model.safetensors"
    return load_file(str(folder / name))


def _inputs(model_dir: Path):
    import io

    from PIL import Image
    from transformers import AutoProcessor

    from sft_util import png

    proc = AutoProcessor.from_pretrained(model_dir)
    msgs = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Is there water?"}]}]
    text = proc.apply_chat_template(msgs, add_generation_prompt=True)
    return proc(text=[text], images=[Image.open(io.BytesIO(png(56, 56, 3))).convert("RGB")], return_tensors="pt")


def _logits(model, inputs):
    with torch.no_grad():
        return model.eval()(**inputs).logits


def _consolidated(ckpt: Path) -> dict:
    """The full fp32 state dict consolidated from a ZeRO checkpoint's shards (module-tree names)."""
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    return get_fp32_state_dict_from_zero_checkpoint(str(ckpt))


CASES = [
    ("zero3", "qwen2.5-vl", "lora"),
    ("zero3", "qwen3-vl", "full"),
    ("zero2", "qwen3-vl", "lora"),
    ("zero2", "qwen2.5-vl", "full"),
]


@pytest.mark.parametrize("engine,family,tuning", CASES, ids=["-".join(c) for c in CASES])
def test_sft_mixed_batches_resume_consolidate_merge(engine, family, tuning, tiny_model_dir, data, tmp_path, capsys):
    from transformers import AutoModelForImageTextToText

    base = tiny_model_dir(family)
    train_data, recipe = data
    whole = tmp_path / "whole"
    args = [recipe, f"model={base}", f"train_data={train_data}", *FAST, *STEPS, *TUNING[tuning]]
    p = launch(engine, "sft", [*args, f"output_dir={whole}"])
    assert p.returncode == 0, p.stderr[-4000:]
    steps = _step_images(whole)
    assert any(0 in s and max(s) > 0 for s in steps), steps  # one rank without images while the other has some
    assert len({n for s in steps for n in s if n}) > 1, steps  # and batches with different numbers of images
    summary = json.loads((whole / "train_summary.json").read_text())
    assert summary["world_size"] == 2 and summary["steps"] == 4
    final = _weights(whole / "final")

    # resume: the run cut back to its step-2 checkpoint continues to the same final weights
    cut = tmp_path / "cut"
    shutil.copytree(
        whole, cut, ignore=shutil.ignore_patterns("checkpoint-4", "final", "train_summary.json", "rank*.json")
    )
    p = launch(engine, "sft", [*args, f"output_dir={cut}", "resume=true"])
    assert p.returncode == 0, p.stderr[-4000:]
    assert "resuming from" in p.stderr and "checkpoint-2" in p.stderr
    resumed = _weights(cut / "final")
    assert resumed.keys() == final.keys()
    assert not [k for k in final if not torch.equal(resumed[k], final[k])]

    inputs = _inputs(base)
    plain = _logits(AutoModelForImageTextToText.from_pretrained(base), inputs)
    if tuning == "lora":
        from peft import PeftModel

        merged_dir = tmp_path / "merged"
        rc, err = run_cli(capsys, "merge", "--base", base, "--adapter", whole / "final", "--out", merged_dir)
        assert rc == 0, err[-2000:]
        merged = AutoModelForImageTextToText.from_pretrained(merged_dir)  # stock transformers, no peft
        ref = PeftModel.from_pretrained(AutoModelForImageTextToText.from_pretrained(base), str(whole / "final"))
        got = _logits(merged, inputs)
        assert (got - _logits(ref, inputs)).abs().max() <= 1e-5
    else:
        model = AutoModelForImageTextToText.from_pretrained(whole / "final")  # stock transformers
        got = _logits(model, inputs)
        # the shards of the last checkpoint, consolidated, are the final weights
        sd = _consolidated(whole / "checkpoint-4")
        fresh = AutoModelForImageTextToText.from_pretrained(base)
        missing, unexpected = fresh.load_state_dict(sd, strict=False)
        assert not unexpected and all("lm_head" in k or "embed" in k for k in missing), (missing, unexpected)
        assert (got - _logits(fresh, inputs)).abs().max() <= 1e-5
    assert (got - plain).abs().max() > 1e-3  # training changed the model


def test_zero3_checkpoint_with_another_world_size_is_refused(tiny_model_dir, data, tmp_path):
    base = tiny_model_dir("qwen2.5-vl")
    train_data, recipe = data
    out = tmp_path / "z3"
    args = [
        recipe,
        f"model={base}",
        f"train_data={train_data}",
        *FAST,
        "max_steps=2",
        "save_steps=2",
        f"output_dir={out}",
    ]
    p = launch("zero3", "sft", args)
    assert p.returncode == 0, p.stderr[-4000:]
    shutil.rmtree(out / "final")
    p = launch("zero3", "sft", [*args, "max_steps=4", "resume=true"], nproc=1)
    assert p.returncode != 0, p.stderr[-4000:]
    lines = [line for line in p.stderr.splitlines() if line.startswith("geovl: error:")]
    assert len(lines) == 1, p.stderr[-4000:]  # one clear line from geovl, no traceback of its own
    assert "[rank0]: Traceback" not in p.stderr and re.search(r"exitcode\s*:\s*2\b", p.stderr)  # exit status 2
    assert "checkpoint-2" in lines[0] and "saved by 2 processes" in lines[0] and "this run has 1 process;" in lines[0]
    assert "torchrun --nproc_per_node 2" in lines[0] and "zero_to_fp32.py" in lines[0]
    assert not (out / "final").exists()


GRPO_PLUGIN = """
def length_reward(completions, **kwargs):
    return [min(1.0, len(c[0]["content"]) / 24) for c in completions]
"""
GRPO_CASES = [("zero3", "qwen2.5-vl"), ("zero2", "qwen3-vl")]


@pytest.mark.parametrize("engine,family", GRPO_CASES, ids=["-".join(c) for c in GRPO_CASES])
def test_grpo_mixed_prompts_resume_and_merge(engine, family, tiny_model_dir, tmp_path, capsys):
    """GRPO (LoRA + merger) on prompts without images, with one and with two images: trains 2 steps, resumes from
    the step-1 sharded checkpoint to the same final adapter, which merges into a folder stock transformers loads."""
    from transformers import AutoModelForImageTextToText

    from geovl.data.schema import make_sample
    from sft_util import png

    qs = [
        ("How many buildings are in the image?", "3", "count"),
        ("Is there water in the image?", "yes", "yes_no"),
        ("图中有多少栋建筑？", "5", "count"),
        ("Is there a road?", "no", "yes_no"),
    ]
    samples = [
        make_sample(f"g{i}", qs[i % 4][0], qs[i % 4][1], [png(56, 56, i + k) for k in range(i % 3)], qtype=qs[i % 4][2])
        for i in range(8)
    ]
    data = write_dataset(tmp_path / "grpo.parquet", samples)
    plugin = tmp_path / "len_rewards.py"
    plugin.write_text(GRPO_PLUGIN)
    recipe = tmp_path / "grpo.yaml"
    recipe.write_text("reward_funcs: [rs_reward]\n")
    base = tiny_model_dir(family)
    args = [
        recipe,
        f"model={base}",
        f"train_data={data}",
        f"reward_file={plugin}",
        *FAST,
        "num_generations=2",
        "max_completion_length=4",
        "save_steps=1",
        "max_steps=2",
        "lr=1e-2",
        "save_total_limit=null",
    ]
    whole = tmp_path / "whole"
    p = launch(engine, "grpo", [*args, f"output_dir={whole}"])
    assert p.returncode == 0, p.stderr[-4000:]
    summary = json.loads((whole / "train_summary.json").read_text())
    assert summary["steps"] == 2
    final = _weights(whole / "final")
    assert any(not torch.equal(final[k], v) for k, v in _weights(whole / "checkpoint-1").items())  # step 2 moved them

    cut = tmp_path / "cut"
    shutil.copytree(
        whole, cut, ignore=shutil.ignore_patterns("checkpoint-2", "final", "train_summary.json", "rank*.json")
    )
    p = launch(engine, "grpo", [*args, f"output_dir={cut}", "resume=true"])
    assert p.returncode == 0, p.stderr[-4000:]
    assert "resuming from" in p.stderr and "checkpoint-1" in p.stderr
    resumed = _weights(cut / "final")
    assert resumed.keys() == final.keys() and not [k for k in final if not torch.equal(resumed[k], final[k])]

    rc, err = run_cli(capsys, "merge", "--base", base, "--adapter", whole / "final", "--out", tmp_path / "merged")
    assert rc == 0, err[-2000:]
    inputs = _inputs(base)
    got = _logits(AutoModelForImageTextToText.from_pretrained(tmp_path / "merged"), inputs)
    assert (got - _logits(AutoModelForImageTextToText.from_pretrained(base), inputs)).abs().max() > 1e-4


def test_fsdp2_config_becomes_an_fsdp2_plugin():
    from transformers import TrainingArguments

    args = TrainingArguments(output_dir="unused", fsdp=True, fsdp_config=str(FSDP_CONFIG), use_cpu=True, report_to=[])
    plugin = args.fsdp_plugin_args
    assert plugin["fsdp_version"] == 2 and plugin["auto_wrap_policy"] == "TRANSFORMER_BASED_WRAP"
    assert plugin["state_dict_type"] == "SHARDED_STATE_DICT" and plugin["reshard_after_forward"] is True
    assert "transformer_cls_names_to_wrap" not in plugin  # wrap units come from each model's _no_split_modules


def test_fsdp_on_cpu_is_refused_before_loading(tiny_model_dir, data, tmp_path, capsys):
    train_data, recipe = data
    base = [recipe, f"model={tiny_model_dir('qwen2.5-vl')}", f"train_data={train_data}", *FAST]
    rc, err = run_cli(
        capsys, "train", "sft", *base, f"output_dir={tmp_path / 'f'}", "fsdp=full_shard", f"fsdp_config={FSDP_CONFIG}"
    )
    assert rc == 2 and "FSDP needs GPUs" in err and "deepspeed=recipes/deepspeed/zero3.json" in err, err
    assert not (tmp_path / "f").exists()  # nothing written
    rc, err = run_cli(
        capsys,
        "train",
        "sft",
        *base,
        f"output_dir={tmp_path / 'g'}",
        "fsdp=full_shard",
        f"fsdp_config={tmp_path / 'no.json'}",
    )
    assert rc == 2 and "no.json: file not found" in err, err
