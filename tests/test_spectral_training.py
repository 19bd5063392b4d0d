"""The spectral projector inside the real training / inference path, on each tiny family:
SFT with ``spectral=true`` trains it (own lr) next to the model, saves it beside the weights in every
checkpoint and ``final/``, restores it on resume; eval / the engine feed cubes through it; merge keeps
it with identical logits; wrong cubes are clear errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import TINY_FAMILIES
from geovl.data.io import read_samples
from geovl.spectral.projector import SpectralProjector
from sft_util import train

ROOT = Path(__file__).resolve().parents[1]
SPECTRAL = [
    "spectral=true",
    "lr_spectral=0.05",
    "tune_llm=lora",
    "max_steps=3",
    "save_steps=3",
    "lr_scheduler=constant",
    "warmup_ratio=0",
    "min_pixels=1024",
    "max_pixels=1024",
]


@pytest.fixture(scope="module")
def hs(spectral_scenes):
    return spectral_scenes


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    return {}


def _run(family, hs, tiny_model_dir, tmp_path_factory, capsys, runs):
    if family not in runs:
        out = tmp_path_factory.mktemp(f"sp-{family}") / "run"
        rc, err = train(capsys, tiny_model_dir(family), hs / "train.parquet", out, *SPECTRAL)
        assert rc == 0, err[-3000:]
        runs[family] = (out, err)
    return runs[family]


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_sft_trains_the_projector_and_saves_it_beside_the_adapter(
    family, hs, tiny_model_dir, tmp_path_factory, capsys, runs
):
    out, err = _run(family, hs, tiny_model_dir, tmp_path_factory, capsys, runs)
    final = out / "final"
    assert "spectral projector: 330 bands (400–2500 nm) → RGB" in err
    # its own parameter group and lr, reported per part
    assert "spectral" in json.loads((out / "train_summary.json").read_text())["trainable"]
    for folder in (final, out / "checkpoint-3"):
        assert (folder / "spectral_projector.safetensors").is_file() and (folder / "spectral_projector.json").is_file()
        pre = json.loads((folder / "geovl_preprocess.json").read_text())
        assert pre["spectral"]["n_bands"] == 330 and len(pre["spectral"]["wavelengths"]) == 330
    trained = SpectralProjector.load(final)
    # the init is a one-hot false-colour selection; training moved weights off it, on other bands too
    init = torch.zeros_like(trained.conv.weight)
    for c, b in enumerate(trained.init_bands):
        init[c, b, 0, 0] = 1.0
    moved = (trained.conv.weight - init).abs()
    assert moved.max() > 1e-3 and int((moved[:, :, 0, 0] > 1e-6).sum()) > 3
    # never inside the model's own weights file
    from safetensors import safe_open

    with safe_open(str(final / "adapter_model.safetensors"), "pt") as f:
        assert not [k for k in f.keys() if "spectral" in k]


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_gradients_reach_the_projector_through_the_frozen_tower(family, hs, tiny_model_dir):
    from geovl.models.loading import load_model_folder
    from geovl.spectral import vision_input as vi
    from geovl.spectral.readers import open_cube

    model, proc, fam = load_model_folder(tiny_model_dir(family))
    s = next(iter(read_samples(hs / "train.parquet")))
    with open_cube(hs / s["meta"]["cube"]) as c:
        projector = SpectralProjector.from_cube(c)
    si = vi.attach(model, fam, projector, proc)
    for p in model.parameters():
        p.requires_grad_(False)
    projector.conv.requires_grad_(True)
    text = proc.apply_chat_template(s["messages"], tokenize=False)
    enc = proc(
        text=[text],
        images=[vi.cube_tensor(hs / s["meta"]["cube"], projector)],
        return_tensors="pt",
        **vi.PROCESSOR_KWARGS,
    )
    assert (
        enc["pixel_values"].shape[1]
        == 330 * proc.image_processor.temporal_patch_size * proc.image_processor.patch_size**2
    )
    model(**enc, labels=enc["input_ids"]).loss.backward()
    g = projector.conv.weight.grad
    assert g is not None and torch.isfinite(g).all() and g.abs().sum() > 0
    assert all(p.grad is None for n, p in model.named_parameters() if not n.startswith(vi.ATTR))
    # an RGB picture where the model wants cubes is a clear error, not a silent reshape
    rgb = proc(
        text=[text],
        images=[torch.rand(3, 32, 32)],
        return_tensors="pt",
        do_rescale=False,
        input_data_format="channels_first",
    )
    with pytest.raises(Exception, match="330-band cube"):
        model(**rgb)
    assert si.n_bands == 330


def _requests(hs, n=4):
    from geovl.evaluate.generate import cube_inputs, split_prompt

    reqs = []
    for s in list(read_samples(hs / "test.parquet"))[:n]:
        r, _ = split_prompt(s)
        r.images = cube_inputs(s, hs)
        reqs.append(r)
    return reqs


def _logits(engine, reqs):
    with torch.no_grad():
        return engine.model(**engine.encode(reqs)).logits


def test_engine_load_reproduces_outputs_and_merge_keeps_the_projector(
    hs, tiny_model_dir, tmp_path_factory, capsys, runs, tmp_path
):
    from geovl.inference.engine import LocalEngine
    from geovl.merge import merge

    out, _ = _run("qwen2.5-vl", hs, tiny_model_dir, tmp_path_factory, capsys, runs)
    reqs = _requests(hs)
    a = LocalEngine(str(out / "final"), device="cpu")
    assert a.spectral is not None and a.spectral.n_bands == 330
    la = _logits(a, reqs)
    # save → load reproduces: the projector in the engine is exactly the saved one, a second load gives the same logits
    saved = SpectralProjector.load(out / "final")
    assert torch.equal(a.spectral.projector.conv.weight, saved.conv.weight)
    assert torch.equal(la, _logits(LocalEngine(str(out / "final"), device="cpu"), reqs))
    # the projector matters: the untrained (init) projector gives other logits
    a.spectral.projector.load_state_dict(
        SpectralProjector(
            saved.wavelengths, saved.rgb_wavelengths, saved.good_bands, saved.mean, saved.std
        ).state_dict()
    )
    assert not torch.allclose(la, _logits(a, reqs), atol=1e-4)

    info = merge(tiny_model_dir("qwen2.5-vl"), out / "final", tmp_path / "merged")
    assert info["spectral_projector"]["n_bands"] == 330
    m = tmp_path / "merged"
    assert json.loads((m / "geovl_preprocess.json").read_text())["spectral"]["n_bands"] == 330
    b = LocalEngine(str(m), device="cpu")
    assert torch.allclose(la, _logits(b, reqs), atol=1e-5)
    # the merged folder still loads with the stock class (the projector is not in its weights)
    from transformers import AutoModelForImageTextToText

    AutoModelForImageTextToText.from_pretrained(str(m))


def test_resume_restores_the_projector(hs, tiny_model_dir, tmp_path, capsys):
    model = tiny_model_dir("qwen3-vl")
    whole, part = tmp_path / "whole", tmp_path / "part"
    common = [o for o in SPECTRAL if not o.startswith(("max_steps", "save_steps"))] + ["save_steps=2"]
    assert train(capsys, model, hs / "train.parquet", whole, *common, "max_steps=4")[0] == 0
    assert train(capsys, model, hs / "train.parquet", part, *common, "max_steps=2")[0] == 0
    (part / "final").rename(part / "first-final")
    rc, err = train(capsys, model, hs / "train.parquet", part, *common, "max_steps=4", resume=True)
    assert rc == 0, err[-2000:]
    a, b = SpectralProjector.load(whole / "final"), SpectralProjector.load(part / "final")
    assert torch.allclose(a.conv.weight, b.conv.weight, atol=1e-6) and torch.allclose(
        a.conv.bias, b.conv.bias, atol=1e-6
    )
    assert not torch.allclose(a.conv.weight, SpectralProjector.load(part / "checkpoint-2").conv.weight)


def test_eval_feeds_cubes_and_rejects_samples_without_one(hs, tiny_model_dir, tmp_path_factory, capsys, runs, tmp_path):
    import pyarrow.parquet as pq

    from geovl.evaluate.generate import run_predictions
    from geovl.inference.engine import LocalEngine

    out, _ = _run("qwen2-vl", hs, tiny_model_dir, tmp_path_factory, capsys, runs)
    rows = pq.read_table(hs / "test.parquet").to_pylist()[:6]
    meta = json.loads(rows[1]["meta"]) if isinstance(rows[1]["meta"], str) else rows[1]["meta"]
    meta["cube"] = "scenes/nowhere/cube.hdr"
    rows[1]["meta"] = json.dumps(meta) if isinstance(rows[1]["meta"], str) else meta
    data = tmp_path / "test.parquet"
    pq.write_table(
        pq.read_table(hs / "test.parquet")
        .schema.empty_table()
        .from_pylist(rows, schema=pq.read_schema(hs / "test.parquet")),
        data,
    )
    eng = LocalEngine(str(out / "final"), device="cpu")
    counts = run_predictions(eng, data, tmp_path / "p.jsonl", spectral_root=hs, progress=False, forced_choice=True)
    assert counts["read"] == 6 and counts["predicted"] == 5 and counts["rejected"] == 1
    rej = [json.loads(x) for x in (tmp_path / "p.rejects.jsonl").read_text().splitlines()]
    assert rej[0]["reason"] == "no_cube" and "nowhere" in rej[0]["detail"]
    preds = [json.loads(x) for x in (tmp_path / "p.jsonl").read_text().splitlines()]
    assert [p["id"] for p in preds] == [r["id"] for k, r in enumerate(rows) if k != 1]

    # a cube from another sensor: named, not reshaped
    from geovl.imagery.decode import ImageError

    with pytest.raises(ImageError, match="224 bands but the model's spectral projector takes 330"):
        eng.cube(np.zeros((224, 16, 16), np.float32))
    wl = np.array(eng.spectral.projector.wavelengths) + 5.0
    from geovl.spectral.readers import write_cube_geotiff

    write_cube_geotiff(tmp_path / "shifted.tif", np.ones((330, 16, 16), np.float32), wavelengths=wl)
    with pytest.raises(ImageError, match="band 1 is at 405 nm"):
        eng.cube((tmp_path / "shifted.tif").read_bytes())
    ok = eng.cube((hs / "scenes" / meta["scene"] / "cube.tif").read_bytes())  # GeoTIFF bytes, as the API receives them
    assert ok.shape == (330, 32, 32) and torch.isfinite(ok).all()


def test_training_a_spectral_model_needs_spectral_true(hs, tiny_model_dir, tmp_path_factory, capsys, runs, tmp_path):
    out, _ = _run("qwen2.5-vl", hs, tiny_model_dir, tmp_path_factory, capsys, runs)
    from geovl.merge import merge

    merged = tmp_path / "merged"
    merge(tiny_model_dir("qwen2.5-vl"), out / "final", merged)
    rc, err = train(capsys, merged, hs / "train.parquet", tmp_path / "again", "max_steps=1")
    assert rc != 0 and "has a spectral projector" in err and "spectral=true" in err
    # continuing with spectral=true starts from the saved projector, not a new one
    rc, err = train(
        capsys,
        merged,
        hs / "train.parquet",
        tmp_path / "again2",
        *SPECTRAL[:1],
        "max_steps=1",
        "tune_llm=lora",
        "min_pixels=1024",
        "max_pixels=1024",
    )
    assert rc == 0, err[-2000:]
    assert f"continued from {merged}" in err


def test_shipped_hyperspectral_recipe_runs(hs, tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "run"
    rc, err = train(
        capsys,
        tiny_model_dir("qwen3-vl"),
        hs / "train.parquet",
        out,
        "max_steps=2",
        recipe=ROOT / "recipes" / "hyperspectral-tiny.yaml",
    )
    assert rc == 0, err[-2000:]
    assert (out / "final" / "spectral_projector.safetensors").is_file() and (
        out / "final" / "model.safetensors"
    ).is_file()
    from safetensors import safe_open

    with safe_open(str(out / "final" / "model.safetensors"), "pt") as f:  # full fine-tuning: still not in the weights
        assert not [k for k in f.keys() if "spectral" in k]


def test_api_answers_a_geotiff_cube_like_the_local_engine(hs, tiny_model_dir, tmp_path_factory, capsys, runs, tmp_path):
    """`geovl serve` on a spectral run: the cube travels as a multi-band GeoTIFF data URI (official openai client)."""
    import base64

    import openai

    from geovl.data.schema import user_turn
    from geovl.inference.engine import ChatRequest, GenerationParams, LocalEngine
    from serve_util import Server, free_port, running

    out, _ = _run("qwen2.5-vl", hs, tiny_model_dir, tmp_path_factory, capsys, runs)
    s = next(iter(read_samples(hs / "test.parquet")))
    tif = (hs / s["meta"]["cube_geotiff"]).read_bytes()
    q = "Is there alteration in this image? Answer yes or no."
    want = LocalEngine(str(out / "final"), device="cpu").generate(
        [ChatRequest([user_turn(q, 1)], [tif])], GenerationParams(max_new_tokens=6)
    )[0]
    server = Server(
        [
            "serve",
            "--model",
            str(out / "final"),
            "--served-model-name",
            "hs",
            "--log-level",
            "warning",
            "--port",
            str(p := free_port()),
        ],
        tmp_path / "serve.log",
        p,
    )
    with running(server):
        c = openai.OpenAI(base_url=server.url + "/v1", api_key="EMPTY", max_retries=0, timeout=120)
        uri = "data:image/tiff;base64," + base64.b64encode(tif).decode()
        msg = [
            {"role": "user", "content": [{"type": "image_url", "image_url": {"url": uri}}, {"type": "text", "text": q}]}
        ]
        got = c.chat.completions.create(model="hs", messages=msg, max_tokens=6, temperature=0)
        assert got.choices[0].message.content == want
        # an RGB PNG is not a cube: a clear 4xx naming the problem, not a crash
        png = (hs / s["meta"]["image"]).read_bytes()
        bad = [
            {
                "role": "user",
                "content": [
                    {
                        "type": "image_url",
                        "image_url": {"url": "data:image/png;base64," + base64.b64encode(png).decode()},
                    },
                    {"type": "text", "text": q},
                ],
            }
        ]
        with pytest.raises(openai.BadRequestError, match="330-band cubes"):
            c.chat.completions.create(model="hs", messages=bad, max_tokens=6)


# a reward with signal on a barely trained model (sampled completions differ in length), as in test_grpo.py
LENGTH_PLUGIN = """
def length_reward(completions, **kwargs):
    return [min(1.0, len(c[0]["content"]) / 24) for c in completions]
"""


def _spectral_grpo(capsys, start, hs, out, plugin, *extra, resume=False):
    from sft_util import FAST, run_cli

    args = [
        "train",
        "grpo",
        ROOT / "recipes" / "grpo-demo-tiny.yaml",
        f"model={start}",
        f"train_data={hs / 'train.parquet'}",
        f"output_dir={out}",
        f"reward_file={plugin}",
        "reward_funcs=[number_reward]",
        *FAST,
        "num_generations=2",
        "max_completion_length=4",
        "save_steps=1",
        "max_steps=2",
        "lr=1e-3",
        "lr_spectral=0.05",
        *extra,
    ]
    return run_cli(capsys, *args, *(["--resume"] if resume else []))


@pytest.mark.parametrize("start", ["lora-adapter", "full-ft-beta"])
def test_grpo_trains_a_spectral_model_on_cubes(start, hs, tiny_model_dir, tmp_path_factory, capsys, runs, tmp_path):
    from geovl.inference import GenerationParams, LocalEngine

    plugin = tmp_path / "len_rewards.py"
    plugin.write_text(LENGTH_PLUGIN)
    extra = []
    if start == "lora-adapter":  # an SFT LoRA run's final/: the adapter and the projector beside it train on
        sft, _ = _run("qwen2.5-vl", hs, tiny_model_dir, tmp_path_factory, capsys, runs)
    else:  # a full fine-tune with a KL term: TRL's reference model (loaded from the folder) gets a frozen projector copy
        sft = tmp_path / "sft"
        rc, err = train(
            capsys,
            tiny_model_dir("qwen3-vl"),
            hs / "train.parquet",
            sft,
            *SPECTRAL,
            "tune_llm=full",
            "tune_merger=full",
        )
        assert rc == 0, err[-2000:]
        extra = ["tune_llm=full", "beta=0.1"]
    sft_proj = SpectralProjector.load(sft / "final")
    out = tmp_path / "grpo"
    rc, err = _spectral_grpo(capsys, sft / "final", hs, out, plugin, *extra)
    assert rc == 0, err[-3000:]
    assert "spectral projector: 330 bands → RGB" in err
    summary = json.loads((out / "train_summary.json").read_text())
    assert summary["steps"] == 2 and summary["trainable"]["spectral"]["trainable"] > 0

    # every checkpoint and final/ hold the projector beside the weights, never inside them; it moved
    for folder in (out / "checkpoint-1", out / "final"):
        assert (folder / "spectral_projector.safetensors").is_file()
        assert json.loads((folder / "geovl_preprocess.json").read_text())["spectral"]["n_bands"] == 330
        # the saved processor is the model's own, not the cube-taking copy TRL was given
        ip = json.loads((folder / "processor_config.json").read_text())["image_processor"]
        assert ip.get("do_rescale", True) is True and ip.get("do_normalize", True) is True
    grpo_proj = SpectralProjector.load(out / "final")
    assert (grpo_proj.conv.weight - sft_proj.conv.weight).abs().max() > 1e-6  # GRPO's gradients reached it
    from safetensors import safe_open

    weights = next(f for f in ("adapter_model.safetensors", "model.safetensors") if (out / "final" / f).is_file())
    with safe_open(str(out / "final" / weights), "pt") as f:
        assert not [k for k in f.keys() if "spectral" in k]

    if start == "lora-adapter":  # interrupted after checkpoint-1 and resumed: the same projector as uninterrupted
        shutil.rmtree(out / "checkpoint-2")
        shutil.rmtree(out / "final")
        rc, err = _spectral_grpo(capsys, sft / "final", hs, out, plugin, *extra, resume=True)
        assert rc == 0, err[-3000:]
        resumed = SpectralProjector.load(out / "final")
        assert torch.allclose(resumed.conv.weight, grpo_proj.conv.weight, atol=1e-6)

    # the result reads cubes in the engine (eval / serve / web app)
    engine = LocalEngine(str(out / "final"))
    assert engine.spectral is not None and engine.spectral.n_bands == 330
    answers = engine.generate(_requests(hs, 2), GenerationParams(max_new_tokens=4))
    assert len(answers) == 2 and all(isinstance(a, str) for a in answers)
    engine.close()


def test_web_app_takes_a_cube_upload_and_refuses_a_picture(hs, tiny_model_dir, tmp_path_factory, capsys, runs):
    import gradio as gr

    from geovl.inference.engine import LocalEngine
    from geovl.ui.webapp import ChatApp

    out, _ = _run("qwen2.5-vl", hs, tiny_model_dir, tmp_path_factory, capsys, runs)
    app = ChatApp(LocalEngine(str(out / "final"), device="cpu"), lang="en")
    s = next(iter(read_samples(hs / "test.parquet")))
    cube = hs / s["meta"]["cube_geotiff"]
    data, shown = app.load_image(str(cube), "en")
    assert data == cube.read_bytes()  # the engine gets the cube itself
    assert Path(shown).suffix == ".png" and Path(shown).is_file()  # the chat shows a rendering
    with pytest.raises(gr.Error, match="330-band GeoTIFF cubes"):
        app.load_image(str(hs / s["meta"]["image"]), "en")
