"""LocalEngine: batched == one-by-one (greedy, all families), exact forward-call counts, streaming,
preprocessing config applied (trained pixel bounds), peft adapters and mismatch errors."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from conftest import TINY_FAMILIES
from geovl.data.schema import assistant_turn, make_sample, text_part, user_turn
from geovl.inference import ChatRequest, Engine, EngineError, GenerationParams, LocalEngine
from serve_util import jpeg, png

MAX_NEW = 6


def mixed_requests() -> list[ChatRequest]:
    """Text-only, one image, two images, multi-turn with a system prompt, different image sizes."""
    reqs = [
        ChatRequest([user_turn("Is there water in the scene?", 1)], [png(1)]),
        ChatRequest([user_turn("What is remote sensing?")], []),
        ChatRequest([user_turn("图中有多少栋建筑？", 1)], [png(2, 168, 56)]),
        ChatRequest([user_turn("Compare the two images: what changed?", 2)], [png(3), jpeg(4)]),
        ChatRequest(
            [
                {"role": "system", "content": [text_part("You are a remote-sensing expert.")]},
                user_turn("Is there a forest?", 1),
                assistant_turn("yes"),
                user_turn("How large is it?"),
            ],
            [png(5, 56, 56)],
        ),
        ChatRequest([user_turn("Road?", 1)], [png(6, 224, 112)]),
        ChatRequest([user_turn("Describe the land use of this county in one sentence, please.")], []),
        ChatRequest([user_turn("有没有裸地？", 1, images_first=False)], [jpeg(7, 100, 70)]),
        ChatRequest([user_turn("bridge?", 1)], [png(8, 70, 70)]),
        ChatRequest([user_turn("Is the area rural or urban?", 1)], [png(9)]),
    ]
    return reqs


@pytest.fixture(scope="module")
def engines(tiny_model_dir):
    cache = {}

    def get(family):
        if family not in cache:
            cache[family] = LocalEngine(str(tiny_model_dir(family)), batch_size=8)
        return cache[family]

    yield get
    for e in cache.values():
        e.close()


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_batched_equals_one_by_one_with_exact_forward_counts(engines, family):
    eng = engines(family)
    assert isinstance(eng, Engine)
    reqs = mixed_requests()
    params = GenerationParams(max_new_tokens=MAX_NEW)

    # one request at a time: per-request token counts; one forward call per generated token
    eng.batch_size = 1
    single, tokens = [], []
    for r in reqs:
        eng.stats.reset()
        single += eng.generate([r], params)
        tokens.append(eng.stats.generated_tokens)
        assert eng.stats.forward_calls == eng.stats.generated_tokens  # prefill → token 1, then one per token
        assert 1 <= eng.stats.generated_tokens <= MAX_NEW

    eng.batch_size = 8
    eng.stats.reset()
    batched = eng.generate(reqs, params)
    assert batched == single  # left padding: identical greedy answers, in request order
    assert eng.stats.samples == len(reqs)
    assert eng.stats.generated_tokens == sum(tokens)
    order = sorted(range(len(reqs)), key=lambda i: eng.estimate_length(reqs[i]))
    batches = [order[s : s + 8] for s in range(0, len(order), 8)]
    assert eng.stats.forward_calls == sum(max(tokens[i] for i in b) for b in batches)
    assert eng.stats.forward_calls < sum(tokens)


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_stream_yields_the_same_text_as_generate(engines, family):
    eng = engines(family)
    req = mixed_requests()[3]  # two images
    params = GenerationParams(max_new_tokens=MAX_NEW)
    full = eng.generate([req], params)[0]
    before = eng.stats.samples
    deltas = list(eng.stream(req, params))
    assert "".join(deltas) == full
    assert all(isinstance(d, str) and d for d in deltas)
    assert eng.stats.samples == before + 1


def test_sampling_is_reproducible_with_a_seed(engines):
    eng = engines("qwen2.5-vl")
    reqs = mixed_requests()[:4]
    p = GenerationParams(max_new_tokens=MAX_NEW, temperature=1.0, top_p=0.9, seed=7)
    assert eng.generate(reqs, p) == eng.generate(reqs, p)


def test_bad_requests_and_params_are_refused():
    with pytest.raises(EngineError, match="2 image parts but 1 images"):
        ChatRequest([user_turn("x", 2)], [png(0)])
    with pytest.raises(EngineError, match="max_new_tokens"):
        GenerationParams(max_new_tokens=0)
    with pytest.raises(EngineError, match="top_p"):
        GenerationParams(top_p=0)


def test_model_folder_preprocess_config_is_applied(tiny_model_dir, tmp_path):
    from geovl.models.preprocess import PreprocessConfig

    folder = tmp_path / "m"
    shutil.copytree(tiny_model_dir("qwen2-vl"), folder)
    PreprocessConfig(min_pixels=28 * 28, max_pixels=28 * 28 * 4, family="qwen2_vl").save(folder)
    eng = LocalEngine(str(folder))
    assert PreprocessConfig.bounds_of(eng.processor) == (784, 3136)
    enc = eng.encode([ChatRequest([user_turn("water?", 1)], [png(0, 224, 224)])])
    n_img = int((enc["input_ids"] == eng.model.config.image_token_id).sum())
    assert n_img == eng.family.image_tokens(224, 224, 784, 3136) == 4
    eng.close()


def test_preprocess_raster_bands_render_geotiffs(tiny_model_dir, tmp_path):
    """A model whose preprocessing config picks raster bands gets GeoTIFFs rendered that way."""
    import rasterio
    from rasterio.transform import from_origin

    from geovl.imagery.decode import ImageError
    from geovl.imagery.geotiff import read_raster, render_rgb
    from geovl.inference.engine import decode_image
    from geovl.models.preprocess import PreprocessConfig

    tif = tmp_path / "s2.tif"
    bands = np.random.default_rng(0).integers(0, 5000, (4, 40, 56)).astype("uint16")
    with rasterio.open(
        tif,
        "w",
        driver="GTiff",
        width=56,
        height=40,
        count=4,
        dtype="uint16",
        crs="EPSG:32650",
        transform=from_origin(0, 0, 10, 10),
    ) as d:
        d.write(bands)
    folder = tmp_path / "m"
    shutil.copytree(tiny_model_dir("qwen2-vl"), folder)
    PreprocessConfig(rgb_bands=[3, 2, 1], stretch=[1.0, 99.0]).save(folder)
    eng = LocalEngine(str(folder))
    raw = tif.read_bytes()
    got = np.asarray(decode_image(raw, eng.preprocess))
    want = render_rgb(read_raster(tif), (3, 2, 1), 1.0, 99.0)
    assert np.array_equal(got, want) and not np.array_equal(got, render_rgb(read_raster(tif)))
    out = eng.generate([ChatRequest([user_turn("NIR?", 1)], [raw])], GenerationParams(max_new_tokens=3))
    assert len(out) == 1 and isinstance(out[0], str)
    eng.close()
    with pytest.raises(ImageError, match="rgb_bands"):
        decode_image(raw, PreprocessConfig(rgb_bands=[7, 2, 1]))


# -- a trained adapter -------------------------------------------------------------------------
TRAIN_MAX_PIXELS = 56 * 56 * 2  # far below the tiny model's default (448²)


@pytest.fixture(scope="module")
def trained(tiny_model_dir, tmp_path_factory):
    """A 2-step LoRA run on qwen2.5-vl with max_pixels=TRAIN_MAX_PIXELS: (base folder, final/)."""
    from geovl.data.io import DatasetWriter
    from geovl.train.recipe import SFTRecipe
    from geovl.train.sft import train_sft

    root = tmp_path_factory.mktemp("sft")
    data = root / "train.parquet"
    with DatasetWriter(data) as w:
        for i in range(8):
            w.read_one()
            w.write(
                make_sample(
                    f"s{i}",
                    "Is there water?",
                    ["yes", "no"][i % 2],
                    [png(100 + i, 112, 112)],
                    qtype="yes_no",
                    source=f"t#{i}",
                )
            )
    base = tiny_model_dir("qwen2.5-vl")
    recipe = SFTRecipe(
        model=str(base), train_data=[str(data)], output_dir=str(root / "run"), max_steps=2, per_device_train_batch_size=4,
        report_to=[], max_pixels=TRAIN_MAX_PIXELS, disable_tqdm=True, save_steps=1000, learning_rate=5e-2, logging_steps=1,
    )  # fmt: skip
    final = train_sft(recipe)
    return base, final


def test_adapter_is_loaded_with_training_pixel_bounds(trained):
    from safetensors.torch import load_file

    from geovl.models.preprocess import PreprocessConfig

    base, final = trained
    eng = LocalEngine(str(base), adapter=str(final), batch_size=4)
    assert type(eng.model).__name__.startswith("PeftModel")
    # the saved LoRA weights are the ones in use (and training moved them off zero)
    saved = load_file(str(final / "adapter_model.safetensors"))
    key = next(k for k in saved if "lora_B" in k)
    live = dict(eng.model.named_parameters())[key.replace(".lora_B.weight", ".lora_B.default.weight")]
    assert saved[key].abs().sum() > 0
    assert np.array_equal(live.detach().numpy(), saved[key].numpy())

    # pixel bounds from the adapter folder's geovl_preprocess.json: X-bounded image tokens
    lo, hi = PreprocessConfig.bounds_of(eng.processor)
    assert hi == TRAIN_MAX_PIXELS
    enc = eng.encode([ChatRequest([user_turn("water?", 1)], [png(0, 224, 224)])])
    n_img = int((enc["input_ids"] == eng.model.config.image_token_id).sum())
    assert n_img == eng.family.image_tokens(224, 224, lo, TRAIN_MAX_PIXELS)
    assert n_img * 28 * 28 <= TRAIN_MAX_PIXELS < 224 * 224
    assert n_img < eng.family.image_tokens(224, 224, None, None)

    reqs = mixed_requests()[:6]
    p = GenerationParams(max_new_tokens=4)
    batched = eng.generate(reqs, p)
    eng.batch_size = 1
    assert eng.generate(reqs, p) == batched
    eng.close()

    # --model may be the adapter folder itself: its base comes from adapter_config.json
    eng2 = LocalEngine(str(final), batch_size=4)
    assert eng2.model_dir == base and eng2.adapter_dir == final
    assert eng2.generate(reqs, p) == batched
    eng2.close()


def _mismatch_models(tmp_path):
    from geovl.models.tiny import build_tiny

    return {
        "wider": build_tiny("qwen2.5-vl", tmp_path / "wider", hidden=96),
        "shallower": build_tiny("qwen2.5-vl", tmp_path / "shallower", layers=1),
    }


def test_adapter_for_another_base_model_is_refused_naming_both(trained, tiny_model_dir, tmp_path, capsys):
    from geovl.models.loading import ModelFolderError

    base, final = trained
    other = _mismatch_models(tmp_path)
    # another family (recorded by training)
    q2 = tiny_model_dir("qwen2-vl")
    with pytest.raises(ModelFolderError) as ei:
        LocalEngine(str(q2), adapter=str(final))
    msg = str(ei.value)
    assert str(final) in msg and str(q2) in msg and "qwen2_5_vl" in msg and "qwen2_vl" in msg
    # same family, another size (recorded base model's config)
    with pytest.raises(ModelFolderError, match="hidden_size 64 vs 96") as ei:
        LocalEngine(str(other["wider"]), adapter=str(final))
    assert str(base) in str(ei.value) and str(other["wider"]) in str(ei.value)

    # without those records, peft's shape check and the exact key comparison still catch it
    bare = tmp_path / "bare_adapter"
    shutil.copytree(final, bare)
    (bare / "geovl_preprocess.json").unlink()
    cfg = json.loads((bare / "adapter_config.json").read_text())
    cfg["base_model_name_or_path"] = "somewhere/else"
    (bare / "adapter_config.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelFolderError, match="size mismatch") as ei:
        LocalEngine(str(other["wider"]), adapter=str(bare))
    assert "somewhere/else" in str(ei.value) and str(other["wider"]) in str(ei.value)
    with pytest.raises(ModelFolderError, match=r"14 unexpected adapter weights \(e\.g\. .*layers\.1\."):
        LocalEngine(str(other["shallower"]), adapter=str(bare))
    with pytest.raises(ModelFolderError, match="no weight .*merger"):
        LocalEngine(str(tiny_model_dir("qwen3-vl")), adapter=str(bare))
    with pytest.raises(ModelFolderError, match="not a peft adapter folder"):
        LocalEngine(str(base), adapter=str(q2))

    # the CLI prints it without a traceback and exits 2
    from geovl.cli import main

    capsys.readouterr()
    rc = main(
        [
            "eval",
            "--model",
            str(q2),
            "--adapter",
            str(final),
            "--data",
            str(tmp_path / "d.jsonl"),
            "--out",
            str(tmp_path / "p.jsonl"),
        ]
    )
    err = capsys.readouterr().err
    assert rc == 2 and "geovl: error: adapter" in err and str(q2) in err and "Traceback" not in err


def test_prompt_longer_than_the_context_is_refused_before_generation(engines, tmp_path):
    """A prompt past the model's positions (the tiny models have 4,096) is a PromptTooLong naming both
    numbers, before any forward pass; batch evaluation rejects just that sample (reason
    ``prompt_too_long``) and answers the others."""
    from geovl.data.io import DatasetWriter
    from geovl.evaluate.generate import run_predictions
    from geovl.inference.engine import PromptTooLong

    eng = engines("qwen2.5-vl")
    assert eng.context_length == 4096
    long_text = "water " * 5000
    calls = eng.stats.forward_calls
    with pytest.raises(PromptTooLong) as e:
        eng.generate([ChatRequest([user_turn(long_text, 1)], [png(1)])], GenerationParams(max_new_tokens=2))
    assert e.value.limit == 4096 and e.value.tokens > 4096 and "4096" in str(e.value)
    assert eng.stats.forward_calls == calls, "the model ran on a prompt past its context"

    data = tmp_path / "d.jsonl"
    with DatasetWriter(data) as w:
        for i, q in enumerate(["Is there water?", long_text, "Is there a road?"]):
            w.write(make_sample(f"s{i}", q, "yes", [png(i)], qtype="yes_no", source=f"t#{i}"))
    out = tmp_path / "p.jsonl"
    counts = run_predictions(eng, data, out, params=GenerationParams(max_new_tokens=2), progress=False)
    assert counts["read"] == 3 and counts["predicted"] == 2 and counts["rejected"] == 1
    rej = [json.loads(line) for line in (tmp_path / "p.rejects.jsonl").read_text().splitlines()]
    assert [r["reason"] for r in rej] == ["prompt_too_long"] and "s1" in json.dumps(rej)
