"""bench/abtest.py (interleaving, per-round ratios, failure files, exact call counts) and bench/report.py
(the README table regenerated from the result files)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"
sys.path.insert(0, str(BENCH))

import abtest  # noqa: E402
import report  # noqa: E402


def test_interleave_runs_sides_alternately_and_needs_three_rounds():
    order = []
    runs = abtest.interleave(
        {"a": lambda i: order.append(("a", i)) or {"x": i}, "b": lambda i: order.append(("b", i)) or {"x": 10 + i}}, 3
    )
    assert order == [("a", 0), ("b", 0), ("a", 1), ("b", 1), ("a", 2), ("b", 2)]
    assert [r["x"] for r in runs["b"]] == [10, 11, 12] and [r["round"] for r in runs["a"]] == [0, 1, 2]
    with pytest.raises(ValueError, match=">= 3"):
        abtest.interleave({"a": lambda i: {}}, 2)


def test_ratio_is_per_round_median_and_range():
    a = [{"t": 4.0}, {"t": 3.0}, {"t": 10.0}]
    b = [{"t": 2.0}, {"t": 3.0}, {"t": 4.0}]
    r = abtest.ratio(a, b, "t", "a over b", goal=1.3)
    assert (r["median"], r["min"], r["max"], r["runs"]) == (2.0, 1.0, 2.5, [2.0, 1.0, 2.5])
    assert r["goal_met_by_median"] is True
    with pytest.raises(ValueError):  # rounds must pair up
        abtest.ratio(a, b[:2], "t", "x")


def test_failed_side_writes_error_without_ratios(tmp_path, capsys):
    out = tmp_path / "r.json"

    def body(env):
        runs = abtest.interleave({"ours": lambda i: {"v": 1.0}, "peer": lambda i: 1 / 0}, 3)
        return {"ratios": {"x": abtest.ratio(runs["ours"], runs["peer"], "v", "never")}}

    assert abtest.finish(out, body, "demo") == 1
    res = json.loads(out.read_text())
    assert res["status"] == "failed" and res["failed_side"] == "peer"
    assert "ZeroDivisionError" in res["error"] and "ratios" not in res
    assert "FAILED demo (side peer)" in capsys.readouterr().err


def test_ok_result_records_provenance(tmp_path):
    out = tmp_path / "r.json"
    assert abtest.finish(out, lambda env: {"ratios": {}}, "demo") == 0
    res = json.loads(out.read_text())
    env = res["environment"]
    assert res["status"] == "ok"
    assert len(env["git"]["commit"]) == 40 and isinstance(env["git"]["dirty"], bool)
    assert env["machine"]["cpus"] >= 1 and env["machine"]["cpu_model"]
    assert env["versions"]["torch"] and env["versions"]["transformers"]


def test_call_counter_counts_forwards_prefill_and_vision(tmp_path):
    import torch
    from PIL import Image
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from geovl.models.tiny import build_tiny

    model_dir = build_tiny("qwen2.5-vl", tmp_path / "m", vocab="small", seed=0)
    proc = AutoProcessor.from_pretrained(model_dir, padding_side="left")
    model = AutoModelForImageTextToText.from_pretrained(model_dir, dtype=torch.float32).eval()
    msgs = [
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": q}]}]
        for q in ("Is there water?", "图中有多少栋建筑物？请数一数")
    ]
    texts = [proc.apply_chat_template(m, tokenize=False, add_generation_prompt=True) for m in msgs]
    imgs = [Image.new("RGB", (112, 112), "green"), Image.new("RGB", (168, 112), "blue")]
    inputs = proc(text=texts, images=imgs, return_tensors="pt", padding=True)
    before = type(model.model.language_model).forward
    with abtest.CallCounter() as cnt, torch.inference_mode():
        model.generate(**inputs, max_new_tokens=3, min_new_tokens=3, do_sample=False)
    assert type(model.model.language_model).forward is before  # restored
    b, s = inputs["input_ids"].shape
    assert cnt.c["forward_calls"] == 3 and cnt.c["prefill_calls"] == 1
    assert cnt.c["prefill_positions"] == b * s
    assert cnt.c["vision_calls"] == 1 and cnt.c["vision_patches"] == int(inputs["pixel_values"].shape[0])


def _ok(name, median, lo, hi, behind=None):
    return {
        "benchmark": name, "status": "ok", "size": "quick", "repeats": 3, "behind": behind,
        "ratios": {"speed": {"median": median, "min": lo, "max": hi}},
        "table": {"name": f"{name} bench", "baseline": "peer | tuned", "counts": "padding 4.1 % vs 9.0 %", "ratios": [["tokens/s", "speed"]]},
        "environment": {"machine": {"cpus": 2}, "git": {"commit": "0123456789abcdef0123456789abcdef01234567"}},
    }  # fmt: skip


def test_report_regenerates_table_between_markers(tmp_path):
    res = tmp_path / "results"
    res.mkdir()
    (res / "sft.json").write_text(json.dumps(_ok("sft", 1.5, 1.2, 2.0)))
    (res / "grpo.json").write_text(json.dumps(_ok("grpo", 0.8, 0.7, 1.1, behind="slower than TRL")))
    (res / "sam.json").write_text(
        json.dumps({"status": "failed", "failed_side": "chunked", "error": "RuntimeError: disk full\ntrace"})
    )
    readme = tmp_path / "README.md"
    readme.write_text(
        f"# x\n\nintro\n{report.START}\nold hand-written table\n{report.END}\n\n## next\n", encoding="utf-8"
    )
    assert report.main(["--readme", str(readme), "--results", str(res), "--check"]) == 1
    assert report.main(["--readme", str(readme), "--results", str(res)]) == 0
    text = readme.read_text(encoding="utf-8")
    assert "old hand-written table" not in text and text.startswith("# x\n\nintro\n") and text.endswith("\n\n## next\n")
    assert (
        "| sft bench | peer \\| tuned | padding 4.1 % vs 9.0 % | tokens/s 1.50× (1.20–2.00; > 1× in every round) (quick, 3 rounds, 2 CPUs, 0123456) |  |"
        in text
    )
    assert "tokens/s 0.80× (0.70–1.10; range includes 1×)" in text and "**behind:** slower than TRL" in text
    assert "| sam | | | **FAILED** (chunked): RuntimeError: disk full | |" in text
    assert "| eval | | | not run | |" in text
    assert report.main(["--readme", str(readme), "--results", str(res), "--check"]) == 0
    assert (
        report._fmt({"median": 1.004, "min": 1.002, "max": 1.011})
        == "1.00× (1.00–1.01; within 2 % of 1× in every round)"
    )


def test_committed_readme_table_matches_committed_results():
    assert report.main(["--check"]) == 0


def test_behind_note_says_whether_the_range_includes_one():
    assert abtest.behind({"median": 1.2, "min": 0.9, "max": 1.5}, "x") is None
    assert (
        abtest.behind({"median": 0.5, "min": 0.4, "max": 0.7}, "x") == "x: 0.50× (0.40–0.70), below 1× in every round"
    )
    assert "no measured difference" in abtest.behind({"median": 0.9, "min": 0.6, "max": 1.3}, "x")
