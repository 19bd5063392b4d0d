"""Training data: budgets drop samples whole (counted, never truncated), bad input is reported,
mixed text-only + image batches are exact, and length grouping packs batches tightly."""

from __future__ import annotations

import base64
import json
import random
import shutil

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from conftest import TINY_FAMILIES
from geovl.data.schema import make_sample
from geovl.models.preprocess import PreprocessConfig
from geovl.models.registry import get_family
from geovl.train.data import SFTCollator, SFTDataset
from geovl.train.trainer import LengthGroupedOrder, padding_fraction
from sft_util import multi_turn_sample, png, qa_samples, train, write_dataset


def _proc(folder):
    from transformers import AutoProcessor

    return AutoProcessor.from_pretrained(folder)


def _budget_samples():
    return [
        make_sample("small", "Is there water?", "yes", [png(56, 56, 1)]),  # 4 visual tokens
        make_sample("big", "Is there water?", "no", [png(448, 448, 2)]),  # 256 visual tokens
        make_sample("text", "Describe Chengdu.", "A city.", []),
        make_sample("long_text", "Describe " + "the county " * 120, "A county.", []),  # long prompt, no image
        make_sample("two_mid", "Compare.", "Same.", [png(224, 224, 3), png(224, 224, 4)]),  # 2 x 64 tokens
        make_sample("mid", "Is there forest?", "yes", [png(224, 224, 5)]),  # 64 tokens
    ]


def test_budgets_drop_whole_samples_and_count_them(tiny_model_dir, tmp_path, capsys):
    model = tiny_model_dir("qwen2.5-vl")
    data = write_dataset(tmp_path / "d.parquet", _budget_samples())
    out = tmp_path / "run"
    rc, err = train(capsys, model, data, out, "max_steps=2", "max_visual_tokens=100", "max_length=150")
    assert rc == 0, err[-2000:]
    dropped = {d["id"]: d for d in map(json.loads, (out / "dropped.jsonl").read_text().splitlines())}
    assert {k: v["reason"] for k, v in dropped.items()} == {
        "big": "over_visual_token_budget",
        "two_mid": "over_visual_token_budget",
        "long_text": "over_max_length",
    }
    assert dropped["big"]["detail"].startswith("256 visual tokens > max_visual_tokens=100")
    assert dropped["big"]["file"] == str(data)
    summary = json.loads((out / "train_summary.json").read_text())["samples"]
    assert summary == {
        "read": 6,
        "kept": 3,
        "dropped": 3,
        "dropped_by_reason": {"over_visual_token_budget": 2, "over_max_length": 1},
    }
    assert "3 kept of 6" in err and "dropped whole (never truncated): 3" in err

    # the kept samples are whole: every image token present, nothing cut at max_length
    proc = _proc(model)
    PreprocessConfig.load(out / "final").apply(proc)
    fam = get_family("qwen2.5-vl")
    ds = SFTDataset([data], proc, fam, max_visual_tokens=100, max_length=150, progress=False)
    assert ds.ids == ["small", "text", "mid"]
    pad = proc.tokenizer.convert_tokens_to_ids("<|image_pad|>")
    lo, hi = PreprocessConfig.bounds_of(proc)
    for i, (w, want) in enumerate([(56, 4), (None, 0), (224, 64)]):
        enc = ds[i]
        assert int((enc["input_ids"] == pad).sum()) == want == (fam.image_tokens(w, w, lo, hi) if w else 0)
        assert enc["input_ids"].shape[0] == ds.lengths[i] <= 150
        assert enc["input_ids"][-2] == proc.tokenizer.convert_tokens_to_ids("<|im_end|>")  # ends with the full answer


def test_bad_records_are_dropped_with_reasons_and_all_dropped_is_an_error(tiny_model_dir, tmp_path, capsys):
    model = tiny_model_dir("qwen2-vl")
    good = make_sample("ok", "Is there water?", "yes", [])
    lines = [
        {**good, "meta": {}},
        {**good, "id": "no_answer", "messages": [good["messages"][0], {"role": "assistant", "content": [{"type": "text", "text": " "}]}]},
        {**good, "id": "bad_parts", "messages": [{"role": "user", "content": "not a list"}]},
        {**good, "id": "bad_img", "messages": make_sample("x", "q", "a", [png(8, 8)])["messages"],
         "images": ["data:image/png;base64," + base64.b64encode(b"not an image at all").decode()]},
    ]  # fmt: skip
    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in lines))
    out = tmp_path / "run"
    rc, err = train(capsys, model, data, out, "max_steps=1")
    assert rc == 0, err[-2000:]
    reasons = {d["id"]: d["reason"] for d in map(json.loads, (out / "dropped.jsonl").read_text().splitlines())}
    assert reasons == {"no_answer": "empty_answer", "bad_parts": "bad_schema", "bad_img": "bad_image"}
    # nothing left to train on: a clear error naming the file and where the reasons are
    only_bad = tmp_path / "bad.jsonl"
    only_bad.write_text("".join(json.dumps(r) + "\n" for r in lines[1:]))
    rc, err = train(capsys, model, only_bad, tmp_path / "run2", "max_steps=1")
    assert rc == 2 and "no trainable samples left" in err and str(only_bad) in err and "dropped.jsonl" in err
    assert "Traceback" not in err and len((tmp_path / "run2" / "dropped.jsonl").read_text().splitlines()) == 3


def test_wrong_dataset_schema_and_missing_processor_are_clear_errors(tiny_model_dir, tmp_path, capsys):
    model = tiny_model_dir("qwen2-vl")
    bad = tmp_path / "plain.parquet"
    pq.write_table(pa.table({"id": ["a"], "question": ["q"], "answer": ["a"]}), bad)
    rc, err = train(capsys, model, bad, tmp_path / "r1", "max_steps=1")
    assert rc == 2 and str(bad) in err and "missing column" in err and "messages" in err and "geovl data convert" in err
    assert "Traceback" not in err

    jl = tmp_path / "plain.jsonl"
    jl.write_text(json.dumps({"question": "q", "answer": "a"}) + "\n")
    rc, err = train(capsys, model, jl, tmp_path / "r2", "max_steps=1")
    assert rc == 2 and f"{jl}:1" in err and "missing field" in err

    rc, err = train(capsys, model, tmp_path / "nope.parquet", tmp_path / "r3", "max_steps=1")
    assert rc == 2 and "nope.parquet" in err

    no_proc = tmp_path / "no_processor"
    no_proc.mkdir()
    for f in ("config.json", "model.safetensors", "generation_config.json"):
        shutil.copy(model / f, no_proc / f)
    data = write_dataset(tmp_path / "d.parquet", qa_samples(2))
    rc, err = train(capsys, no_proc, data, tmp_path / "r4", "max_steps=1")
    assert rc == 2 and str(no_proc) in err and "processor" in err and "Fix:" in err and "save_pretrained" in err
    assert "Traceback" not in err

    rc, err = train(capsys, tmp_path / "missing_model", data, tmp_path / "r5", "max_steps=1")
    assert rc == 2 and "missing_model" in err and "not found" in err


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_mixed_text_only_and_image_batch_equals_one_by_one(tiny_model_dir, tmp_path, family):
    """A batch of a text-only sample (first!), a one-image and a two-image sample gives the same
    logits and loss terms as running each sample alone: padding and image concatenation are exact."""
    from transformers import AutoModelForImageTextToText

    folder = tiny_model_dir(family)
    proc = _proc(folder)
    samples = [
        make_sample("t", "Name a river in Sichuan.", "The Min River.", []),
        qa_samples(2)[1],
        multi_turn_sample(),
    ]
    data = write_dataset(tmp_path / "d.parquet", samples)
    ds = SFTDataset([data], proc, get_family(family), progress=False)
    feats = [ds[i] for i in range(3)]
    assert "pixel_values" not in feats[0]
    batch = SFTCollator(proc.tokenizer.pad_token_id)(feats)
    assert batch["sample_ids"] == ["t", "s1", "mt0"] and "mm_token_type_ids" in batch
    assert batch["image_grid_thw"].shape[0] == 3  # 0 + 1 + 2 images, in order
    model = AutoModelForImageTextToText.from_pretrained(folder).eval()
    batch.pop("sample_ids")
    with torch.no_grad():
        together = model(**batch).logits
        for i, f in enumerate(feats):
            alone = SFTCollator(proc.tokenizer.pad_token_id)([f])
            alone.pop("sample_ids")
            single = model(**alone).logits[0]
            n = f["input_ids"].shape[0]
            assert torch.allclose(together[i, :n], single, atol=1e-5), (
                family,
                i,
                (together[i, :n] - single).abs().max(),
            )
    assert (batch["labels"][0] != -100).sum() > 0 and (
        batch["attention_mask"].sum(1).tolist() == [f["input_ids"].shape[0] for f in feats]
    )


def test_length_grouped_order():
    rng = random.Random(0)
    lengths = [rng.choice([70, 80, 300, 320, 1300, 1400]) + rng.randrange(5) for _ in range(203)]
    s = LengthGroupedOrder(lengths, batch_size=4, seed=7)  # mega-batches of 200: one sorted pool + a tail
    b0 = s.batches()
    flat = [i for b in b0 for i in b]
    assert sorted(flat) == list(range(203)) and list(iter(s)) == flat  # every sample exactly once
    # the batches are transformers' own length grouping (mega-batches of 50 batches, seeded with seed + epoch) ...
    from transformers.trainer_pt_utils import LengthGroupedSampler, get_length_grouped_indices

    hf = get_length_grouped_indices(lengths, 4, 50, torch.Generator().manual_seed(7))
    assert isinstance(s, LengthGroupedSampler)
    assert sorted(map(tuple, b0)) == sorted(tuple(hf[k : k + 4]) for k in range(0, 203, 4))
    # ... in shuffled order, not transformers' long-to-short sweep through each mega-batch
    longest = [max(lengths[i] for i in b) for b in b0[1:-1]]
    assert longest != sorted(longest, reverse=True) and flat != hf
    assert [len(b) for b in b0[:-1]] == [4] * 50 and len(b0[-1]) == 3  # only the last batch is short
    assert max(lengths[i] for i in b0[0]) == max(lengths)  # the longest batch first
    assert s.batches() == b0  # same seed and epoch -> same order (what resume relies on)
    s.set_epoch(1)
    assert s.batches() != b0 and sorted(i for b in s.batches() for i in b) == list(range(203))
    s.set_epoch(0)
    assert s.batches() == b0
    rand = [list(range(203))[k : k + 4] for k in range(0, 203, 4)]
    grouped, random_pad = padding_fraction(lengths, b0), padding_fraction(lengths, rand)
    assert grouped < 0.05 < 0.3 < random_pad
