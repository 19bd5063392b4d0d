"""The training loop: gradient checkpointing and accumulation, schedules, seeds, DataLoader workers,
progress + TensorBoard logs, self-contained checkpoints, exact resume, NaN stop."""

from __future__ import annotations

import json
import math
import shutil

import pytest
import torch

from geovl.data.schema import make_sample
from sft_util import adapter, png, progress, qa_samples, train, write_dataset


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    # mixed sizes + text-only so grouping, padding and image concatenation are all exercised
    return write_dataset(
        tmp_path_factory.mktemp("training") / "d.parquet",
        qa_samples(12, sizes=((56, 84), (140, 112), (84, 84), (196, 56))),
    )


@pytest.fixture(scope="module")
def model(tiny_model_dir):
    return tiny_model_dir("qwen2.5-vl")


def _same(a: dict, b: dict, atol: float = 0.0) -> bool:
    return a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=atol, rtol=0) for k in a)


def test_same_seed_same_adapter_other_seed_differs(model, data, tmp_path, capsys):
    runs = {}
    for name, seed in (("a", 3), ("b", 3), ("c", 4)):
        rc, err = train(capsys, model, data, tmp_path / name, "max_steps=3", f"seed={seed}", "lr=1e-2")
        assert rc == 0, err[-2000:]
        runs[name] = adapter(tmp_path / name / "final")
    assert _same(runs["a"], runs["b"])  # bit-identical
    assert not _same(runs["a"], runs["c"], atol=1e-6)


def test_workers_and_gradient_checkpointing_do_not_change_the_result(model, data, tmp_path, capsys, monkeypatch):
    import transformers.modeling_utils as mu

    calls = {"n": 0}
    real = mu.checkpoint

    def counting(*a, **k):
        calls["n"] += 1
        return real(*a, **k)

    rc, err = train(capsys, model, data, tmp_path / "ref", "max_steps=3", "lr=1e-2")
    assert rc == 0, err[-2000:]
    monkeypatch.setattr(mu, "checkpoint", counting)
    rc, err = train(
        capsys, model, data, tmp_path / "gc", "max_steps=3", "lr=1e-2", "gradient_checkpointing=true", "num_workers=2"
    )
    assert rc == 0, err[-2000:]
    assert calls["n"] >= 3 * 2  # every decoder layer went through activation checkpointing, every step
    ref, gc = adapter(tmp_path / "ref" / "final"), adapter(tmp_path / "gc" / "final")
    assert _same(ref, gc, atol=1e-6)  # recomputation (RNG preserved) + 2 decoding workers: same weights


def test_gradient_accumulation_matches_a_bigger_batch(model, data, tmp_path, capsys):
    common = ["max_steps=2", "lr=1e-2", "lora_dropout=0", "group_by_length=false", "warmup_ratio=0"]
    rc, err = train(capsys, model, data, tmp_path / "big", *common, "batch_size=4", "grad_accum=1")
    assert rc == 0, err[-2000:]
    rc, err = train(capsys, model, data, tmp_path / "acc", *common, "batch_size=2", "grad_accum=2")
    assert rc == 0, err[-2000:]
    big, acc = adapter(tmp_path / "big" / "final"), adapter(tmp_path / "acc" / "final")
    # same samples per optimizer step, loss normalised over all their tokens: the same losses and
    # (up to float summation order, which Adam amplifies a little) the same weights
    loss = {n: [r["loss"] for r in progress(tmp_path / n) if "loss" in r] for n in ("big", "acc")}
    assert len(loss["acc"]) == 2 and loss["acc"] == pytest.approx(loss["big"], rel=1e-5)
    assert _same(big, acc, atol=1e-4)
    rc, err = train(capsys, model, data, tmp_path / "small", *common, "batch_size=2", "grad_accum=1")
    assert rc == 0 and not _same(big, adapter(tmp_path / "small" / "final"), atol=1e-3)  # a real difference is visible


def test_length_grouping_removes_padding(model, data, tmp_path, capsys):
    pad = {}
    for grouped in ("true", "false"):
        out = tmp_path / f"g{grouped}"
        rc, err = train(capsys, model, data, out, "max_steps=3", "batch_size=4", f"group_by_length={grouped}")
        assert rc == 0, err[-2000:]
        s = json.loads((out / "train_summary.json").read_text())
        assert s["real_tokens"] > 0 and s["padded_tokens"] >= s["real_tokens"]
        pad[grouped] = s["padding_fraction"]
    assert pad["true"] < pad["false"] / 2, pad  # one epoch of the same 12 samples, batched by length vs at random


@pytest.mark.parametrize("schedule", ["cosine", "linear"])
def test_learning_rate_schedules(model, data, tmp_path, capsys, schedule):
    out = tmp_path / schedule
    rc, err = train(capsys, model, data, out, "max_steps=5", "lr=1e-3", "warmup_ratio=0", f"lr_scheduler={schedule}")
    assert rc == 0, err[-2000:]
    lrs = [r["lr"] for r in progress(out) if "lr" in r]
    assert len(lrs) == 5
    for s, lr in enumerate(lrs):  # the lr logged at step s+1 is the one used for that step
        want = 1e-3 * (0.5 * (1 + math.cos(math.pi * s / 5)) if schedule == "cosine" else 1 - s / 5)
        assert lr == pytest.approx(want, rel=1e-9, abs=1e-15)


def test_progress_and_tensorboard_logs(model, data, tmp_path, capsys):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "logs"
    rc, err = train(
        capsys, model, data, out, "max_steps=4", "report_to=[tensorboard]", f"eval_data={data}", "eval_steps=2"
    )
    assert rc == 0, err[-2000:]
    evals = [r for r in progress(out) if "eval_loss" in r]
    assert [r["step"] for r in evals] == [2, 4] and all(math.isfinite(r["eval_loss"]) for r in evals)
    assert "eval samples: 12 kept of 12" in err
    recs = [r for r in progress(out) if "loss" in r]
    assert [r["step"] for r in recs] == [1, 2, 3, 4]
    for r in recs:
        assert {"step", "loss", "lr", "tokens_per_s", "percent", "eta_s", "elapsed_s", "max_steps"} <= r.keys()
        assert r["percent"] == pytest.approx(100 * r["step"] / 4) and r["tokens_per_s"] > 0 and r["eta_s"] >= 0
        assert math.isfinite(r["loss"])
    assert recs[-1]["eta_s"] == 0
    events = list((out / "tensorboard").glob("events.out.tfevents.*"))
    assert events
    acc = EventAccumulator(str(out / "tensorboard"))
    acc.Reload()
    losses = acc.Scalars("train/loss")
    assert [e.step for e in losses] == [1, 2, 3, 4]
    assert [e.value for e in losses] == pytest.approx([r["loss"] for r in recs], rel=1e-6)
    summary = json.loads((out / "train_summary.json").read_text())
    assert summary["steps"] == 4 and summary["world_size"] == 1 and 0 <= summary["padding_fraction"] < 1


def _assert_self_contained(folder, family="qwen2_5_vl"):
    from transformers import AutoProcessor

    for f in (
        "adapter_model.safetensors",
        "adapter_config.json",
        "processor_config.json",
        "tokenizer.json",
        "chat_template.jinja",
        "geovl_preprocess.json",
    ):
        assert (folder / f).is_file(), folder / f
    cfg = json.loads((folder / "adapter_config.json").read_text())
    assert cfg["modules_to_save"] == ["model.visual.merger"]
    assert any(".visual.merger." in k for k in adapter(folder))  # the trained merger is inside the adapter
    assert json.loads((folder / "geovl_preprocess.json").read_text())["family"] == family
    proc = AutoProcessor.from_pretrained(folder)
    assert type(proc).__name__ == "Qwen2_5_VLProcessor" and proc.chat_template


def test_checkpoints_are_self_contained_and_resume_is_exact(model, data, tmp_path, capsys):
    out = tmp_path / "run"
    args = ["max_steps=6", "save_steps=3", "lr=1e-2", "max_pixels=50176"]
    rc, err = train(capsys, model, data, out, *args)
    assert rc == 0, err[-2000:]
    for folder in (out / "checkpoint-3", out / "checkpoint-6", out / "final"):
        _assert_self_contained(folder)
    assert json.loads((out / "final" / "geovl_preprocess.json").read_text())["max_pixels"] == 50176
    uninterrupted = adapter(out / "final")
    at3 = adapter(out / "checkpoint-3")
    assert not _same(at3, uninterrupted, atol=1e-6)

    # "kill" the run after checkpoint-3: everything later is gone
    shutil.rmtree(out / "checkpoint-6")
    shutil.rmtree(out / "final")
    rc, err = train(capsys, model, data, out, *args)  # starting over would overwrite the checkpoints: refused
    assert rc == 2 and "unfinished run (checkpoint-3)" in err and "--resume" in err
    rc, err = train(capsys, model, data, out, *args, resume=True)
    assert rc == 0, err[-2000:]
    assert "resuming from" in err and "checkpoint-3" in err
    resumed = adapter(out / "final")
    assert _same(resumed, uninterrupted, atol=1e-6), max(
        (resumed[k] - uninterrupted[k]).abs().max().item() for k in resumed
    )
    assert json.loads((out / "train_summary.json").read_text())["steps"] == 6

    # a finished run is not silently overwritten; --resume without a checkpoint is a clear error
    rc, err = train(capsys, model, data, out, *args)
    assert rc == 2 and "already holds a finished run" in err
    rc, err = train(capsys, model, data, tmp_path / "empty", *args, resume=True)
    assert rc == 2 and "no checkpoint" in err


def test_non_finite_loss_stops_the_run_naming_step_and_samples(model, tmp_path, capsys):
    samples = [make_sample(f"pic{i}", "Is there water?", "yes" if i % 2 else "no", [png(56, 56, i)]) for i in range(6)]
    data = write_dataset(tmp_path / "d.parquet", samples)
    # lr 1e30: after one update the LoRA weights overflow float32 -> inf/NaN activations at step 2
    rc, err = train(capsys, model, data, tmp_path / "nan", "max_steps=6", "lr=1e30", "warmup_ratio=0")
    assert rc == 2, err[-2000:]
    line = [x for x in err.splitlines() if "geovl: error:" in x][-1]
    assert "loss became" in line and "at step" in line and "batch samples" in line
    step = int(line.split("at step ")[1].split(";")[0])
    assert 2 <= step <= 6
    named = line.split("batch samples: ")[1]
    assert any(f"'pic{i}'" in named for i in range(6))
    assert "Traceback" not in err and not (tmp_path / "nan" / "final").exists()
