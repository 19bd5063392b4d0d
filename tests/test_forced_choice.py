"""Forced-choice evaluation: candidate log-probabilities are exact teacher-forced sums, and eval picks the argmax."""

from __future__ import annotations

import io
import json

import pytest
import torch
from PIL import Image

from geovl.data.io import DatasetWriter
from geovl.data.schema import make_sample
from geovl.evaluate.generate import candidates_for, choice_candidates, run_predictions
from geovl.inference.engine import ChatRequest, LocalEngine


def _png(color, size=(112, 112)) -> bytes:
    b = io.BytesIO()
    Image.new("RGB", size, color).save(b, "PNG")
    return b.getvalue()


@pytest.fixture(scope="module")
def engine(tiny_model_dir):
    return LocalEngine(str(tiny_model_dir("qwen2.5-vl")), batch_size=3)


def _manual_logprob(engine, req: ChatRequest, answer: str) -> float:
    """Sum of log p(answer tokens + <|im_end|>) computed one sample at a time, no padding."""
    proc = engine.processor
    prompt = engine.prompt_text(req)
    imgs = [Image.open(io.BytesIO(b)).convert("RGB") for b in req.images]
    enc = proc(text=[prompt + answer + "<|im_end|>"], images=imgs or None, return_tensors="pt")
    n = len(engine.tokenizer(answer + "<|im_end|>", add_special_tokens=False)["input_ids"])
    with torch.inference_mode():
        logits = engine.model(**enc).logits.float()
    lp = torch.log_softmax(logits[0, :-1], -1).gather(-1, enc["input_ids"][0, 1:, None])[:, 0]
    return float(lp[-n:].sum())


def test_choice_logprobs_equal_teacher_forced_sums(engine):
    reqs = [
        ChatRequest(
            [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "图中是否有水体？"}]}],
            [_png((0, 0, 255))],
        ),
        ChatRequest([{"role": "user", "content": [{"type": "text", "text": "Is this rural or urban?"}]}], []),
        ChatRequest(
            [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Is there forest?"}]}],
            [_png((0, 90, 0), (168, 112))],
        ),
    ]
    cands = [["是", "否"], ["rural", "urban", "suburban area"], ["yes", "no"]]
    got = engine.choice_logprobs(reqs, cands)  # batched with left padding, mixed image/text-only
    for req, cs, row in zip(reqs, cands, got):
        for c, v in zip(cs, row):
            assert v == pytest.approx(_manual_logprob(engine, req, c), abs=1e-4)
            assert v < 0


def test_candidates_for_yes_no_and_choice():
    s = {"qtype": "yes_no", "meta": {"lang": "zh"}}
    assert candidates_for(s, "否", {}) == ["是", "否"]
    assert candidates_for(s, "没有", {}) == ["有", "没有"]
    assert candidates_for(s, "Yes", {}) == ["Yes", "No"]
    assert candidates_for(s, "maybe", {}) is None  # not a closed answer: generate instead
    c = {"qtype": "choice", "meta": {"lang": "en"}}
    assert candidates_for(c, "urban", {"en": ["rural", "urban"]}) == ["rural", "urban"]
    assert candidates_for(c, "urban", {"zh": ["农村", "城镇"]}) is None
    assert candidates_for({"qtype": "count", "meta": {}}, "3", {}) is None


def test_eval_forced_choice_picks_the_argmax(engine, tmp_path):
    data = tmp_path / "d.parquet"
    with DatasetWriter(data) as w:
        for i, (q, a, qt, lang) in enumerate(
            [
                ("图中是否有水体？", "是", "yes_no", "zh"),
                ("Is there water?", "no", "yes_no", "en"),
                ("Rural or urban?", "rural", "choice", "en"),
                ("Rural or urban?", "urban", "choice", "en"),
                ("How many buildings?", "3", "count", "en"),
            ]
        ):
            w.read_one()
            w.write(make_sample(f"s{i}", q, a, [_png((i * 40, 100, 200))], qt, f"t#{i}", meta={"lang": lang}))
    assert choice_candidates(data) == {"en": ["rural", "urban"]}
    out = tmp_path / "p.jsonl"
    counts = run_predictions(engine, data, out, forced_choice=True, progress=False)
    assert counts["predicted"] == 5
    recs = [json.loads(line) for line in out.read_text().splitlines()]
    for r in recs[:4]:
        scores = r["forced_choice"]
        assert r["prediction"] == max(scores, key=scores.get)
        assert set(scores) == (
            {"是", "否"} if r["lang"] == "zh" else {"yes", "no"} if r["qtype"] == "yes_no" else {"rural", "urban"}
        )
    assert "forced_choice" not in recs[4]  # counts are generated freely
