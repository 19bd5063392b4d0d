"""Packed SFT (``packing=true``): a packed row gives each sample exactly the logits and loss it gets alone, for all
three families with eager and sdpa attention (float32); labels stay assistant-only; what cannot pack is refused."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from conftest import TINY_FAMILIES
from geovl.data.schema import make_sample
from geovl.models.registry import get_family
from geovl.train.data import IGNORE, SFTCollator, SFTDataset
from geovl.train.packing import PackingError, check_packable, enable_packing, pack_rows, packed_position_ids
from sft_util import multi_turn_sample, png, qa_samples, train, write_dataset


def _samples():
    return [
        qa_samples(2)[1],  # one image
        make_sample("t", "Name a river in Sichuan.", "The Min River.", []),  # text only, in the middle
        multi_turn_sample(),  # two images, two assistant turns
        make_sample("w", "图中有建筑吗？", "有", [png(84, 56, 9)]),
    ]


def _loss(logits, labels):
    """Mean next-token cross-entropy over the label tokens (what the model's loss does)."""
    return F.cross_entropy(logits[:-1], labels[1:], ignore_index=IGNORE, reduction="sum") / (labels[1:] != IGNORE).sum()


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_packed_row_equals_each_sample_alone(tiny_model_dir, tmp_path, family, attn):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    folder = tiny_model_dir(family)
    proc = AutoProcessor.from_pretrained(folder)
    ds = SFTDataset([write_dataset(tmp_path / "d.parquet", _samples())], proc, get_family(family), progress=False)
    feats = [ds[i] for i in range(len(ds))]
    coll = SFTCollator(proc.tokenizer.pad_token_id)
    row = coll([{"packed": feats}])
    lens = [f["input_ids"].shape[0] for f in feats]
    assert (
        row["input_ids"].shape == (1, sum(lens))
        and "attention_mask" not in row
        and row["packed_seq_lens"].tolist() == lens
    )
    assert row["sample_ids"] == ["s1", "t", "mt0", "w"] and row["image_grid_thw"].shape[0] == 4  # 1 + 0 + 2 + 1 images

    # labels: exactly each sample's assistant tokens, decoded
    lab = row["labels"][0]
    text = proc.tokenizer.decode(lab[lab != IGNORE])
    assert (
        text.replace(" ", "")
        == "yes<|im_end|>TheMinRiver.<|im_end|>Cropland,mostlywheat.<|im_end|>第二张森林更多。<|im_end|>有<|im_end|>".replace(
            " ", ""
        )
    )

    model = AutoModelForImageTextToText.from_pretrained(folder, dtype=torch.float32, attn_implementation=attn).eval()
    check_packable(model)
    enable_packing(model)
    enable_packing(model)  # idempotent: one hook
    row.pop("sample_ids")
    with torch.no_grad():
        out = model(**row)
        packed_logits = out.logits[0]
        # the positions the hook built: text positions restart per sample, rotary ones = the model's own per sample
        pos = packed_position_ids(model, row["input_ids"], row["mm_token_type_ids"], row["image_grid_thw"], lens)
        start, img = 0, 0
        losses, counts = [], []
        for f, n in zip(feats, lens):
            alone = coll([f])
            alone.pop("sample_ids")
            ref = model(**alone)
            k = f["image_grid_thw"].shape[0] if "image_grid_thw" in f else 0
            own, _ = model.model.get_rope_index(
                f["input_ids"][None], f["mm_token_type_ids"][None], image_grid_thw=f.get("image_grid_thw")
            )
            assert torch.equal(pos[1:, :, start : start + n], own) and pos[0, 0, start : start + n].tolist() == list(
                range(n)
            )
            seg = packed_logits[start : start + n]
            diff = (seg - ref.logits[0]).abs().max().item()
            assert diff < 1e-4, (family, attn, f["sample_id"], diff)
            seg_loss = _loss(seg, f["labels"])
            assert abs(seg_loss.item() - ref.loss.item()) < 1e-5, (f["sample_id"], seg_loss.item(), ref.loss.item())
            losses.append(ref.loss.item())
            counts.append(int((f["labels"][1:] != IGNORE).sum()))
            start, img = start + n, img + k
        # the row's loss is the token-weighted mean of the samples' losses (a padded batch's loss too)
        expect = sum(loss * c for loss, c in zip(losses, counts)) / sum(counts)
        assert abs(out.loss.item() - expect) < 1e-5

        # the check can fail: the same row without per-sample positions lets samples see each other
        plain = {k: v for k, v in row.items() if k != "packed_seq_lens"}
        leaked = model(**plain).logits[0, lens[0] : lens[0] + lens[1]]
        assert (leaked - packed_logits[lens[0] : lens[0] + lens[1]]).abs().max().item() > 1e-3


def test_pack_rows_every_sample_once_within_budget():
    lengths = [30, 200, 120, 80, 80, 10, 199, 5, 60, 150]
    rows = pack_rows(lengths, 200, seed=3)
    assert sorted(i for r in rows for i in r) == list(range(10))
    assert all(sum(lengths[i] for i in r) <= 200 for r in rows)
    assert pack_rows(lengths, 200, seed=3) == rows and pack_rows(lengths, 200, seed=4) != rows  # seeded
    with pytest.raises(PackingError, match="below the longest sample"):
        pack_rows(lengths, 150, seed=0)


def test_refusals_name_what_is_missing(tiny_model_dir):
    from transformers import AutoModelForImageTextToText

    folder = tiny_model_dir("qwen2.5-vl")
    model = AutoModelForImageTextToText.from_pretrained(folder, dtype=torch.float32, attn_implementation="sdpa")
    with pytest.raises(PackingError, match="spectral"):
        check_packable(model, spectral=True)
    model.config._attn_implementation = "flex_attention"
    with pytest.raises(PackingError, match="flex_attention.*eager"):
        check_packable(model)
    model.config._attn_implementation = "sdpa"
    model.config.model_type = "llava"
    with pytest.raises(PackingError, match="llava"):
        check_packable(model)


def test_packed_training_run_has_no_padding(tiny_model_dir, tmp_path, capsys):
    folder = tiny_model_dir("qwen2.5-vl")
    samples = qa_samples(10, text_only_every=4)
    data = write_dataset(tmp_path / "d.parquet", samples)
    rc, err = train(
        capsys,
        folder,
        data,
        tmp_path / "run",
        "packing=true",
        "epochs=1",
        "group_by_length=true",
        "lora_dropout=0",
        "warmup_ratio=0",
    )
    assert rc == 0, err
    s = json.loads((tmp_path / "run" / "train_summary.json").read_text())
    assert s["padding_fraction"] == 0.0 and s["packing"]["samples"] == 10
    from transformers import AutoProcessor

    ds = SFTDataset([data], AutoProcessor.from_pretrained(folder), get_family("qwen2.5-vl"), progress=False)
    assert s["real_tokens"] == s["padded_tokens"] == sum(ds.lengths)  # every sample once, no padding token
    assert s["steps"] == s["packing"]["rows"] < 10  # several samples per step
    rc, err = train(capsys, folder, data, tmp_path / "run2", "packing=true", "packing_tokens=10")
    assert rc == 2 and "packing_tokens=10" in err and "longest sample" in err
