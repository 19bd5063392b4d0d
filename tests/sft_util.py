"""Helpers shared by the SFT / merge / recipe / DDP tests (plain functions; fixtures live in conftest.py).

- ``png(w, h, seed)``: encoded PNG bytes of a random image.
- ``write_dataset(path, samples)`` / ``qa_samples(...)``: small geovl datasets built with make_sample.
- ``run_cli(capsys, *argv)``: run ``geovl`` in-process, return (exit code, stderr).
- ``adapter(folder)``: the tensors of a run folder's adapter_model.safetensors.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
from PIL import Image

from geovl.data.io import DatasetWriter
from geovl.data.schema import assistant_turn, make_sample, text_part, user_turn, validate_sample

FAST = ["report_to=[]", "progress_bar=false", "logging_steps=1", "batch_size=2"]


def png(w: int, h: int, seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    b = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(b, "PNG")
    return b.getvalue()


def qa_samples(
    n: int = 12, sizes=((56, 84), (112, 56), (84, 84), (140, 112)), text_only_every: int = 3, seed: int = 0
) -> list[dict]:
    """Single-turn yes/no samples in English and Chinese; every ``text_only_every``-th has no image."""
    out = []
    for i in range(n):
        w, h = sizes[i % len(sizes)]
        imgs = [] if text_only_every and i % text_only_every == 0 else [png(w, h, seed * 1000 + i)]
        q, a = ("Is there water in the image?", "yes") if i % 2 else ("图中有水吗？", "没有")
        out.append(make_sample(f"s{i}", q, a, imgs, qtype="yes_no", source=f"test#{i}"))
    return out


def multi_turn_sample(id: str = "mt0", seed: int = 0) -> dict:
    """system + (image, question, answer) + (image, question, answer): two images, two assistant turns."""
    s = {
        "id": id,
        "messages": [
            {"role": "system", "content": [text_part("You are a remote-sensing analyst.")]},
            user_turn("What land cover dominates?", 1),
            assistant_turn("Cropland, mostly wheat."),
            user_turn("和这张相比呢？", 1),
            assistant_turn("第二张森林更多。"),
        ],
        "images": [png(56, 84, seed), png(112, 56, seed + 1)],
        "qtype": "open",
        "answer": "第二张森林更多。",
        "source": "test#mt",
        "meta": {},
    }
    validate_sample(s)
    return s


def write_dataset(path: Path, samples: list[dict]) -> Path:
    path = Path(path)
    with DatasetWriter(path) as w:
        for s in samples:
            w.read_one()
            assert w.write(s), s["id"]
    return path


def run_cli(capsys, *argv: str) -> tuple[int, str]:
    """``geovl ARGV`` in this process (no import cost per call); returns (exit code, captured stderr)."""
    from geovl.cli import main

    capsys.readouterr()
    rc = main([str(a) for a in argv])
    return rc, capsys.readouterr().err


def train(
    capsys, model: Path, data: Path, out: Path, *overrides: str, recipe: Path | None = None, resume: bool = False
) -> tuple[int, str]:
    args = [
        "train",
        "sft",
        str(recipe) if recipe else _empty_recipe(out),
        f"model={model}",
        f"train_data={data}",
        f"output_dir={out}",
    ]
    args += FAST + list(overrides)
    if resume:
        args.append("--resume")
    return run_cli(capsys, *args)


def _empty_recipe(out: Path) -> str:
    p = Path(str(out) + ".recipe.yaml")
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text("# defaults\n{}\n")
    return str(p)


def adapter(folder: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(Path(folder) / "adapter_model.safetensors"))


def progress(out: Path) -> list[dict]:
    return [json.loads(line) for line in (Path(out) / "progress.jsonl").read_text().splitlines() if line.strip()]


def sft_recipes() -> list[Path]:
    """The shipped SFT recipes on RGB data: recipes/*.yaml except the GRPO ones (``grpo-*.yaml``, for `geovl train
    grpo`) and the hyperspectral ones (``spectral: true``, tested on cubes in tests/test_spectral_training.py)."""
    import yaml

    root = Path(__file__).resolve().parents[1] / "recipes"
    return sorted(
        p
        for p in root.glob("*.yaml")
        if not p.stem.startswith("grpo") and not (yaml.safe_load(p.read_text()) or {}).get("spectral")
    )
