"""Two-process DDP on the CPU (gloo) with ``torchrun --nproc_per_node 2 -m geovl train sft ...``:
two ranks really run, see disjoint halves of the data, and end with identical weights."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import torch

from sft_util import FAST, adapter, qa_samples, write_dataset


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_rank_ddp_ends_with_identical_weights(tiny_model_dir, tmp_path):
    # 12 samples, 4 of them text-only: a text-only batch on one rank leaves the merger unused there
    data = write_dataset(tmp_path / "d.parquet", qa_samples(12))
    recipe = tmp_path / "r.yaml"
    recipe.write_text("tune_merger: full\n")
    out = tmp_path / "ddp"
    torchrun = Path(sys.executable).with_name("torchrun")
    cmd = [
        str(torchrun), "--nproc_per_node", "2", "--master_port", str(_free_port()),
        "-m", "geovl", "train", "sft", str(recipe), f"model={tiny_model_dir('qwen2.5-vl')}", f"train_data={data}",
        f"output_dir={out}", "max_steps=3", "save_steps=3", "lr=1e-2", *FAST,
    ]  # fmt: skip
    env = dict(os.environ, GEOVL_RANK_STATE="1", OMP_NUM_THREADS="1")
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-4000:]

    ranks = [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["rank"] for r in ranks] == [0, 1]
    assert all(r["world_size"] == 2 == r["args_world_size"] and r["global_step"] == 3 for r in ranks)
    assert ranks[0]["sha256"] == ranks[1]["sha256"] and ranks[0]["trainable_params"] == ranks[1]["trainable_params"] > 0
    seen0, seen1 = set(ranks[0]["sample_ids"]), set(ranks[1]["sample_ids"])
    assert ranks[0]["samples_seen"] == ranks[1]["samples_seen"] == 3 * 2  # 3 steps x batch 2 on each rank
    assert not seen0 & seen1 and seen0 | seen1 == {f"s{i}" for i in range(12)}  # the data was sharded
    summary = json.loads((out / "train_summary.json").read_text())
    assert summary["world_size"] == 2 and summary["steps"] == 3

    # rank 0 saved what both ranks hold: the final adapter equals the step-3 checkpoint and moved off zero
    final, ck = adapter(out / "final"), adapter(out / "checkpoint-3")
    assert final.keys() == ck.keys() and all(torch.equal(final[k], ck[k]) for k in final)
    assert all(final[k].abs().sum() > 0 for k in final if "lora_B" in k)
