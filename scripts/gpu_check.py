"""The checks of scripts/gpu_check.sh (see docs/gpu-check.md). Each check runs in its own process
(``--child NAME``) so a crash, a hang (timeout) or DeepSpeed's process group cannot spoil the next, and its peak
GPU memory is its own; the parent prints one JSON line per check and appends it to ``--out``.

    python scripts/gpu_check.py --device cuda|cpu [--only a,b] [--out FILE] [--work DIR]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FAMILIES = ("qwen2-vl", "qwen2.5-vl", "qwen3-vl")
# name → (what it needs besides torch/transformers/peft, per-check timeout s)
CHECKS = {
    **{f"sft_lora_{f}": (("trl",), 240) for f in FAMILIES},
    "sft_vision_lora": (("trl",), 240),
    "liger": (("trl", "liger_kernel"), 240),
    "zero2": (("trl", "deepspeed"), 300),
    "zero3": (("trl", "deepspeed"), 300),
    "grpo": (("trl",), 300),
    "merge_logits": (("trl",), 240),
    "batched_eval": (("trl",), 240),
    "api_smoke": (("trl", "fastapi", "uvicorn"), 240),
}
CUDA_ONLY = {
    "liger": "Liger kernels are Triton GPU kernels",
    "zero2": "DeepSpeed on one GPU is what is checked",
    "zero3": "DeepSpeed on one GPU is what is checked",
}


class Skip(Exception):
    pass


# -- helpers (child side) ---------------------------------------------------------------------------------
def _cli(*argv) -> None:
    from geovl.cli import main

    rc = main([str(a) for a in argv])
    if rc != 0:
        raise RuntimeError(f"geovl {' '.join(map(str, argv[:3]))} … exited {rc}")


def _tiny(work: Path, family: str) -> Path:
    d = work / "models" / family
    if not (d / "config.json").is_file():
        from geovl.models.tiny import build_tiny

        build_tiny(family, d, seed=0, overwrite=True)
    return d


def _data(work: Path) -> Path:
    p = work / "data" / "sft.parquet"
    if not p.is_file():
        import io

        import numpy as np
        from PIL import Image

        from geovl.data.io import DatasetWriter
        from geovl.data.schema import make_sample

        p.parent.mkdir(parents=True, exist_ok=True)
        rng = np.random.default_rng(0)
        with DatasetWriter(p) as w:
            for i in range(8):
                b = io.BytesIO()
                Image.fromarray(rng.integers(0, 255, (56 + 28 * (i % 3), 84, 3), dtype=np.uint8)).save(b, "PNG")
                q, a = ("How many buildings are in the image?", str(i % 4)) if i % 2 else ("图中有水吗？", "有")
                w.read_one()
                w.write(
                    make_sample(
                        f"s{i}",
                        q,
                        a,
                        [] if i % 4 == 0 else [b.getvalue()],
                        qtype="count" if i % 2 else "yes_no",
                        source=f"gpu_check#{i}",
                    )
                )
    return p


def _recipe(work: Path) -> Path:
    p = work / "empty.yaml"
    p.write_text("{}\n")
    return p


def _sft(work: Path, device: str, family: str, name: str, *extra: str) -> Path:
    out = work / "runs" / name
    if (out / "final").is_dir():
        return out
    prec = "bf16" if device == "cuda" else "fp32"
    _cli(
        "train",
        "sft",
        _recipe(work),
        f"model={_tiny(work, family)}",
        f"train_data={_data(work)}",
        f"output_dir={out}",
        "max_steps=3",
        "batch_size=2",
        "lr=1e-2",
        "warmup_ratio=0",
        f"precision={prec}",
        "report_to=[]",
        "progress_bar=false",
        "logging_steps=1",
        *extra,
    )
    s = json.loads((out / "train_summary.json").read_text())
    if s["steps"] != 3 or not s["train_loss"] == s["train_loss"]:
        raise RuntimeError(f"{out}: {s['steps']} steps, loss {s['train_loss']}")
    return out


def _merged(work: Path, device: str) -> Path:
    out = work / "merged"
    if not (out / "config.json").is_file():
        run = _sft(work, device, "qwen2.5-vl", "sft_lora_qwen2.5-vl")
        _cli("merge", "--base", _tiny(work, "qwen2.5-vl"), "--adapter", run / "final", "--out", out, "--force")
    return out


def _ds_env() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))


# -- the checks -------------------------------------------------------------------------------------------
def check(name: str, work: Path, device: str) -> dict:
    detail: dict = {}
    if name.startswith("sft_lora_"):
        fam = name[len("sft_lora_") :]
        out = _sft(work, device, fam, name)
        detail["loss"] = json.loads((out / "train_summary.json").read_text())["train_loss"]
    elif name == "sft_vision_lora":
        out = _sft(work, device, "qwen3-vl", name, "tune_vision=lora")
        detail["loss"] = json.loads((out / "train_summary.json").read_text())["train_loss"]
    elif name == "liger":
        out = _sft(work, device, "qwen2.5-vl", name, "use_liger=true")
        detail["loss"] = json.loads((out / "train_summary.json").read_text())["train_loss"]
    elif name in ("zero2", "zero3"):
        _ds_env()
        out = _sft(work, device, "qwen2.5-vl", name, f"deepspeed={ROOT / 'recipes' / 'deepspeed' / (name + '.json')}")
        detail["loss"] = json.loads((out / "train_summary.json").read_text())["train_loss"]
    elif name == "grpo":
        out = work / "runs" / "grpo"
        rec = work / "grpo.yaml"
        rec.write_text("reward_funcs: [rs_reward]\nreport_to: []\n")
        prec = "bf16" if device == "cuda" else "fp32"
        _cli(
            "train",
            "grpo",
            rec,
            f"model={_tiny(work, 'qwen2.5-vl')}",
            f"train_data={_data(work)}",
            f"output_dir={out}",
            "num_generations=2",
            "max_completion_length=4",
            "max_steps=2",
            "batch_size=2",
            "lr=1e-3",
            f"precision={prec}",
            "progress_bar=false",
            "logging_steps=1",
            "max_prompt_length=96",
        )
        if not (out / "final").is_dir():
            raise RuntimeError(f"{out}/final not written")
    elif name == "merge_logits":
        import torch
        from peft import PeftModel
        from transformers import AutoModelForImageTextToText, AutoProcessor

        merged = _merged(work, device)
        base = _tiny(work, "qwen2.5-vl")
        run = work / "runs" / "sft_lora_qwen2.5-vl" / "final"
        proc = AutoProcessor.from_pretrained(merged)
        msgs = [{"role": "user", "content": [{"type": "text", "text": "How many buildings are in the image?"}]}]
        inputs = proc.apply_chat_template(
            msgs, tokenize=True, add_generation_prompt=True, return_dict=True, return_tensors="pt"
        ).to(device)
        with torch.no_grad():
            got = AutoModelForImageTextToText.from_pretrained(merged).to(device).eval()(**inputs).logits.float()
            ref_model = (
                PeftModel.from_pretrained(AutoModelForImageTextToText.from_pretrained(base), str(run)).to(device).eval()
            )
            want = ref_model(**inputs).logits.float()
            plain = AutoModelForImageTextToText.from_pretrained(base).to(device).eval()(**inputs).logits.float()
        diff, effect = (got - want).abs().max().item(), (got - plain).abs().max().item()
        detail.update(max_abs_diff=diff, adapter_effect=effect)
        if not (diff <= 1e-4 and effect > 1e-3):
            raise RuntimeError(
                f"merged vs base+adapter max |Δlogit| {diff:.3g} (≤ 1e-4 wanted), adapter effect {effect:.3g}"
            )
    elif name == "batched_eval":  # the random tiny base: long, varied greedy answers that padding mistakes would change
        merged = _tiny(work, "qwen2.5-vl")
        outs = {}
        for bs in (1, 4):
            o = work / f"eval_bs{bs}.jsonl"
            o.unlink(missing_ok=True)
            _cli(
                "eval",
                "--model",
                merged,
                "--data",
                _data(work),
                "--out",
                o,
                "--device",
                device,
                "--batch-size",
                bs,
                "--max-new-tokens",
                "8",
                "--no-progress",
            )
            outs[bs] = [json.loads(line) for line in o.read_text().splitlines() if line.strip()]
        n = {bs: len(v) for bs, v in outs.items()}
        same = sum(a.get("prediction") == b.get("prediction") for a, b in zip(outs[1], outs[4]))
        detail.update(records=n, same_prediction=same)
        if n[1] != 8 or n[4] != 8:
            raise RuntimeError(f"expected 8 predictions per run, got {n}")
        if not any(r.get("prediction") for r in outs[1]):
            raise RuntimeError("every prediction is empty")
        # float32 on a CPU: identical; bf16 kernels on a GPU may flip a near-tie in a batch of different lengths
        if same < (8 if device == "cpu" else 6):
            raise RuntimeError(f"batch size 4 changed {8 - same} of 8 greedy answers against batch size 1")
    elif name == "api_smoke":
        detail.update(_api_smoke(work, device))
    else:
        raise ValueError(f"unknown check {name}")
    return detail


def _api_smoke(work: Path, device: str) -> dict:
    import base64
    import io
    import urllib.request

    import numpy as np
    from PIL import Image

    merged = _merged(work, device)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = open(work / "serve.log", "w")
    p = subprocess.Popen(
        [sys.executable, "-m", "geovl", "serve", "--model", str(merged), "--device", device, "--port", str(port)],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=dict(os.environ),
    )
    try:
        url = f"http://127.0.0.1:{port}/v1"
        for _ in range(240):
            if p.poll() is not None:
                raise RuntimeError(f"geovl serve exited {p.returncode}: {(work / 'serve.log').read_text()[-500:]}")
            try:
                models = json.loads(urllib.request.urlopen(url + "/models", timeout=2).read())
                break
            except OSError:
                time.sleep(0.5)
        else:
            raise RuntimeError("geovl serve did not answer /v1/models within 120 s")
        b = io.BytesIO()
        Image.fromarray(np.random.default_rng(0).integers(0, 255, (84, 112, 3), dtype=np.uint8)).save(b, "PNG")
        body = {
            "model": models["data"][0]["id"],
            "max_tokens": 8,
            "temperature": 0,
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {
                            "type": "image_url",
                            "image_url": {"url": "data:image/png;base64," + base64.b64encode(b.getvalue()).decode()},
                        },
                        {"type": "text", "text": "Is there water in the image?"},
                    ],
                }
            ],
        }
        req = urllib.request.Request(
            url + "/chat/completions", json.dumps(body).encode(), {"Content-Type": "application/json"}
        )
        ans = json.loads(urllib.request.urlopen(req, timeout=60).read())
        text = ans["choices"][0]["message"]["content"]
        if not isinstance(text, str):
            raise RuntimeError(f"no text in the answer: {ans}")
        return {"answer": text[:40]}
    finally:
        p.terminate()
        try:
            p.wait(20)
        except subprocess.TimeoutExpired:
            p.kill()


def child(name: str, work: Path, device: str) -> None:
    import torch

    rec = {"check": name, "device": device}
    t0 = time.time()
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    try:
        rec["detail"] = check(name, work, device)
        rec["status"] = "pass"
    except Exception as e:  # noqa: BLE001 - every failure is reported, the next check still runs
        rec["status"] = "fail"
        rec["error"] = f"{type(e).__name__}: {str(e).strip()[-800:]}"
    rec["seconds"] = round(time.time() - t0, 1)
    rec["peak_gpu_mib"] = round(torch.cuda.max_memory_allocated() / 2**20, 1) if device == "cuda" else None
    print("GPU_CHECK " + json.dumps(rec, ensure_ascii=False), flush=True)


# -- parent ---------------------------------------------------------------------------------------------
def main() -> int:
    ap = argparse.ArgumentParser(description="geovl GPU acceptance checks (one JSON line each)")
    ap.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    ap.add_argument("--only", default="", help="comma-separated check names (default: all): " + ", ".join(CHECKS))
    ap.add_argument("--out", default="gpu_check.jsonl")
    ap.add_argument("--work", default=None, help="scratch folder (default: a new temporary one)")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    a = ap.parse_args()
    import tempfile

    work = Path(a.work or tempfile.mkdtemp(prefix="geovl-gpu-check-"))
    work.mkdir(parents=True, exist_ok=True)
    if a.child:
        child(a.child, work, a.device)
        return 0
    names = [n.strip() for n in a.only.split(",") if n.strip()] or list(CHECKS)
    unknown = [n for n in names if n not in CHECKS]
    if unknown:
        print(f"gpu_check: unknown check(s) {unknown}; known: {', '.join(CHECKS)}", file=sys.stderr)
        return 2
    if a.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            print(
                "gpu_check: --device cuda but torch sees no CUDA device (use --device cpu for the dry run)",
                file=sys.stderr,
            )
            return 2
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    failed = 0
    with out.open("a", encoding="utf-8") as f:
        for name in names:
            needs, timeout = CHECKS[name]
            rec = None
            missing = [m for m in needs if importlib.util.find_spec(m) is None]
            if missing:
                rec = {
                    "check": name,
                    "device": a.device,
                    "status": "skip",
                    "reason": f"package(s) not installed: {', '.join(missing)}",
                }
            elif a.device == "cpu" and name in CUDA_ONLY:
                rec = {"check": name, "device": a.device, "status": "skip", "reason": f"needs CUDA ({CUDA_ONLY[name]})"}
            else:
                t0 = time.time()
                try:
                    p = subprocess.run(
                        [sys.executable, __file__, "--child", name, "--device", a.device, "--work", str(work)],
                        capture_output=True,
                        text=True,
                        timeout=timeout,
                    )
                    lines = [ln for ln in p.stdout.splitlines() if ln.startswith("GPU_CHECK ")]
                    if lines:
                        rec = json.loads(lines[-1][len("GPU_CHECK ") :])
                        if rec["status"] == "fail":  # geovl's own error line is on the child's stderr
                            err = [ln for ln in p.stderr.splitlines() if ln.strip() and "Warning" not in ln]
                            rec["error"] += " | " + " / ".join(err[-3:])[-600:]
                    else:
                        rec = {
                            "check": name,
                            "device": a.device,
                            "status": "fail",
                            "seconds": round(time.time() - t0, 1),
                            "error": f"exited {p.returncode} without a result: {p.stderr.strip()[-800:]}",
                        }
                except subprocess.TimeoutExpired:
                    rec = {
                        "check": name,
                        "device": a.device,
                        "status": "fail",
                        "seconds": round(time.time() - t0, 1),
                        "error": f"timed out after {timeout} s",
                    }
            failed += rec["status"] == "fail"
            line = json.dumps(rec, ensure_ascii=False)
            print(line, flush=True)
            f.write(line + "\n")
            f.flush()
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
