"""The saved recipe reproduces a run, and `geovl train ... --nproc N` / `--nnodes M` launch the processes
themselves (through torch.distributed.run; gloo on the CPU): two processes on one machine, and two launchers
joined as two "nodes" on 127.0.0.1, each ending with identical weights on every rank."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from geovl.train.recipe import load_recipe
from sft_util import FAST, adapter, qa_samples, run_cli, train, write_dataset


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_dataset(
        tmp_path_factory.mktemp("launch") / "d.parquet", qa_samples(12)
    )  # 3 steps × 2 × 2 ranks: one epoch


def test_saved_recipe_reproduces_the_run(tiny_model_dir, data, tmp_path, capsys):
    model = tiny_model_dir("qwen2.5-vl")
    first = tmp_path / "first"
    rc, err = train(capsys, model, data, first, "max_steps=3", "lr=1e-2", "max_grad_norm=0.5", "adam_beta2=0.9")
    assert rc == 0, err[-3000:]
    saved = first / "recipe.yaml"
    r = load_recipe(saved)
    assert (r.max_grad_norm, r.adam_beta2, r.max_steps) == (0.5, 0.9, 3)
    # the resolved recipe alone (only output_dir changed) trains the same weights
    again = tmp_path / "again"
    rc, err = run_cli(capsys, "train", "sft", saved, f"output_dir={again}")
    assert rc == 0, err[-3000:]
    a, b = adapter(first / "final"), adapter(again / "final")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert any(a[k].abs().sum() > 0 for k in a if "lora_B" in k)  # it trained


def _cmd(recipe: Path, model: Path, data: Path, out: Path, *launch: str) -> list[str]:
    return [sys.executable, "-m", "geovl", "train", "sft", str(recipe), f"model={model}", f"train_data={data}",
            f"output_dir={out}", "max_steps=3", "save_steps=3", "lr=1e-2", *FAST, *launch]  # fmt: skip


def _ranks(out: Path, n: int) -> list[dict]:
    ranks = [json.loads((out / f"rank{r}.json").read_text()) for r in range(n)]
    assert [r["rank"] for r in ranks] == list(range(n))
    assert all(r["world_size"] == n and r["global_step"] == 3 for r in ranks)
    assert len({r["sha256"] for r in ranks}) == 1 and ranks[0]["trainable_params"] > 0  # identical weights everywhere
    seen = [set(r["sample_ids"]) for r in ranks]
    assert not seen[0] & seen[1] and len(seen[0] | seen[1]) == 12  # the data was sharded between the ranks
    return ranks


def test_nproc_2_starts_two_processes(tiny_model_dir, data, tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("tune_merger: full\n")
    out = tmp_path / "nproc"
    env = dict(os.environ, GEOVL_RANK_STATE="1", OMP_NUM_THREADS="1")
    p = subprocess.run(_cmd(recipe, tiny_model_dir("qwen2.5-vl"), data, out, "--nproc", "2"), env=env, capture_output=True,
                       text=True, timeout=600)  # fmt: skip
    assert p.returncode == 0, p.stderr[-4000:]
    assert "starting 2 process(es)" in p.stderr
    _ranks(out, 2)
    assert json.loads((out / "train_summary.json").read_text())["world_size"] == 2
    final, ck = adapter(out / "final"), adapter(out / "checkpoint-3")
    assert all(torch.equal(final[k], ck[k]) for k in final)


def test_two_nodes_on_127_0_0_1_end_with_identical_weights(tiny_model_dir, data, tmp_path):
    """Two launchers, `--nnodes 2 --node-rank 0|1`, one process each, rendezvous on 127.0.0.1:PORT (full tuning)."""
    recipe = tmp_path / "r.yaml"
    recipe.write_text("tune_llm: full\ntune_merger: full\n")
    out = tmp_path / "nodes"
    port = str(_free_port())
    env = dict(os.environ, GEOVL_RANK_STATE="1", OMP_NUM_THREADS="1")
    model = tiny_model_dir("qwen2.5-vl")
    procs = [
        subprocess.Popen(_cmd(recipe, model, data, out, "--nproc", "1", "--nnodes", "2", "--node-rank", str(r),
                              "--master-addr", "127.0.0.1", "--master-port", port),
                         env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for r in (0, 1)
    ]  # fmt: skip
    errs = []
    try:
        for p in procs:
            _, e = p.communicate(timeout=600)
            errs.append(e)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    assert [p.returncode for p in procs] == [0, 0], "\n----\n".join(e[-3000:] for e in errs)
    _ranks(out, 2)
    assert (out / "final" / "model.safetensors").is_file()  # full tuning: global rank 0 wrote whole weights


def test_nproc_refusals(tmp_path, capsys, monkeypatch):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("model: m\ntrain_data: [d.parquet]\n")
    have = len(os.sched_getaffinity(0)) if not torch.cuda.is_available() else torch.cuda.device_count()
    rc, err = run_cli(capsys, "train", "sft", recipe, "--nproc", str(have + 1))
    assert rc == 2 and f"--nproc {have + 1}" in err and f"has {have}" in err and "Traceback" not in err
    rc, err = run_cli(capsys, "train", "sft", recipe, "--nproc", "1", "--nnodes", "2", "--node-rank", "0")
    assert rc == 2 and "--master-addr" in err
    rc, err = run_cli(
        capsys, "train", "sft", recipe, "--nproc", "1", "--nnodes", "2", "--node-rank", "2", "--master-addr", "h"
    )
    assert rc == 2 and "0..1" in err
    monkeypatch.setenv("WORLD_SIZE", "2")
    rc, err = run_cli(capsys, "train", "sft", recipe, "--nproc", "2")
    assert rc == 2 and "inside a launched process" in err
    # a bad recipe key fails once, in the launcher, before any process starts
    monkeypatch.delenv("WORLD_SIZE")
    rc, err = run_cli(capsys, "train", "sft", recipe, "bach_size=2", "--nproc", "1")
    assert rc == 2 and "did you mean 'batch_size'" in err and "starting" not in err


def test_accelerate_launch_module_geovl(tiny_model_dir, data, tmp_path):
    """People who launch themselves: `accelerate launch --multi_gpu --num_processes 2 -m geovl train sft ...`
    (accelerate's torch.distributed launcher; on this CPU-only machine the ranks talk over gloo)."""
    recipe = tmp_path / "r.yaml"
    recipe.write_text("tune_merger: full\n")
    out = tmp_path / "accelerate"
    accelerate = Path(sys.executable).with_name("accelerate")
    cmd = [str(accelerate), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no",
           "--dynamo_backend", "no", "--main_process_port", str(_free_port()), "-m",
           *_cmd(recipe, tiny_model_dir("qwen2.5-vl"), data, out)[2:]]  # fmt: skip
    env = dict(os.environ, GEOVL_RANK_STATE="1", OMP_NUM_THREADS="1")
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-4000:]
    _ranks(out, 2)
