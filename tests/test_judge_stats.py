"""Judge statistics (geovl.evaluate.judge_stats, `geovl judge stats`) against hand-computed figures."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from geovl.cli import main
from geovl.evaluate.judge_stats import JudgmentsFileError, compare, read_judgments, summarize, turn_score

DIMS = ("creativity", "richness", "visual_perception", "logical_coherence", "answer_accuracy", "image_relationship")


def S(vals, overall=None):
    s = dict(zip(DIMS, vals))
    if overall is not None:
        s["overall"] = overall
    return s


# Dialogue A: turn 1 all six (4,5,6,7,8,6 → sum 36) + overall 8; turn 2 only creativity 6, richness 6
# (an earlier record of A#2 is superseded). Dialogue B: turn 1 unparseable, turn 2 a failed call,
# turn 3 all six 5 (sum 30) + overall 9.
RECORDS = [
    {"id": "A", "turn": 1, "status": "ok", "scores": S([4, 5, 6, 7, 8, 6], 8)},
    {"id": "A", "turn": 2, "status": "ok", "scores": S([1, 1, 1, 1, 1, 1], 1)},  # superseded below
    {"id": "B", "turn": 1, "status": "unparseable", "scores": {}, "raw": "???"},
    {"id": "A", "turn": 2, "status": "partial", "scores": {"creativity": 6, "richness": 6}},
    {"id": "B", "turn": 2, "status": "error", "scores": {}, "error": "HTTP 500"},
    {"id": "B", "turn": 3, "status": "ok", "scores": S([5, 5, 5, 5, 5, 5], 9)},
]


@pytest.fixture
def run_dir(tmp_path):
    d = tmp_path / "run1"
    d.mkdir()
    (d / "judgments.jsonl").write_text("".join(json.dumps(r) + "\n" for r in RECORDS), encoding="utf-8")
    return d


def test_turn_score_rule():
    assert turn_score(S([5] * 6, 8), 6) == pytest.approx((30 + 48) / 12)  # = 6.5, the documented example
    assert turn_score(S([5] * 6, 8), 1) == pytest.approx(38 / 7)
    assert turn_score(S([5] * 6, 8), 0) == 5
    assert turn_score({"creativity": 6, "richness": 7}, 6) == 6.5  # no explicit overall: the dimensions only
    assert turn_score({"overall": 7}, 6) == 7
    assert turn_score({}, 6) is None


def test_hand_computed_means(run_dir):
    recs = read_judgments(run_dir)
    assert [(r["id"], r["turn"]) for r in recs] == [("A", 1), ("A", 2), ("B", 1), ("B", 2), ("B", 3)]  # last A#2 wins
    s = summarize(recs, overall_weight=1)
    d = s["dimensions"]
    assert d["creativity"] == {"mean": pytest.approx(50.0), "n_valid": 3}  # (4+6+5)/3 ×10
    assert d["richness"] == {"mean": pytest.approx(160 / 3), "n_valid": 3}  # (5+6+5)/3 ×10
    assert d["visual_perception"] == {"mean": pytest.approx(55.0), "n_valid": 2}
    assert d["logical_coherence"] == {"mean": pytest.approx(60.0), "n_valid": 2}
    assert d["answer_accuracy"] == {"mean": pytest.approx(65.0), "n_valid": 2}
    assert d["image_relationship"] == {"mean": pytest.approx(55.0), "n_valid": 2}
    assert d["overall"] == {"mean": pytest.approx(85.0), "n_valid": 2}  # the judge's explicit overall: (8+9)/2
    # combined, weight 1: A1 44/7, A2 12/2, B3 39/7 → mean ×10 = 1250/21
    assert s["overall"] == pytest.approx(1250 / 21) and s["n_scored"] == 3 and s["n_turns"] == 5
    assert s["status"] == {"ok": 2, "partial": 1, "unparseable": 1, "error": 1}
    assert s["n_dialogues"] == 2
    assert s["dialogues"]["A"]["overall"] == pytest.approx(10 * (44 / 7 + 6) / 2)
    assert s["dialogues"]["B"]["overall"] == pytest.approx(390 / 7)
    assert s["dialogues"]["B"]["dimensions"]["creativity"] == {"mean": pytest.approx(50.0), "n_valid": 1}
    assert s["dialogues"]["B"]["n_turns"] == 3 and s["dialogues"]["B"]["n_scored"] == 1
    assert s["dialogue_macro"] == pytest.approx(10 * 41 / 7)


def test_overall_weight_six_and_zero(run_dir):
    recs = read_judgments(run_dir)
    assert summarize(recs, 6)["overall"] == pytest.approx(10 * (7 + 6 + 7) / 3)  # A1 (36+48)/12, A2 6, B3 (30+54)/12
    assert summarize(recs, 0)["overall"] == pytest.approx(10 * (6 + 6 + 5) / 3)
    # the per-dimension figures do not depend on the weight
    assert summarize(recs, 6)["dimensions"] == summarize(recs, 1)["dimensions"]


def test_cli_stats_writes_files(run_dir, capsys):
    assert main(["judge", "stats", str(run_dir), "--overall-weight", "6"]) == 0
    out = capsys.readouterr().out
    assert "66.7" in out and "3/5" in out and "2 complete, 1 partial, 1 unparseable, 1 errors" in out
    s = json.loads((run_dir / "stats.json").read_text(encoding="utf-8"))
    assert s["overall"] == pytest.approx(200 / 3) and s["overall_weight"] == 6
    md = (run_dir / "stats.md").read_text(encoding="utf-8")
    assert "| Creativity / 创造性 | 50.0 | 3/5 |" in md
    assert "| combined (overall weight 6) / 综合 | 66.7 | 3/5 |" in md
    # per dialogue (weight 6): A = (7 + 6) / 2, B = 7 (only B3 is scored)
    assert "| A | 2 | 2 | 50.0 | 55.0 | 60.0 | 70.0 | 80.0 | 60.0 | 80.0 | 65.0 |" in md
    assert "| B | 3 | 1 | 50.0 | 50.0 | 50.0 | 50.0 | 50.0 | 50.0 | 90.0 | 70.0 |" in md
    assert "Mean of the per-dialogue combined scores / 按对话平均: 67.5" in md


def test_compare_two_runs(run_dir, tmp_path, capsys):
    after = tmp_path / "run2"
    after.mkdir()
    recs2 = [
        {"id": "A", "turn": 1, "status": "ok", "scores": S([6, 7, 8, 9, 9, 8], 9)},
        {"id": "A", "turn": 2, "status": "ok", "scores": S([7, 7, 7, 7, 7, 7], 7)},
        {"id": "B", "turn": 1, "status": "ok", "scores": S([5, 5, 5, 5, 5, 5], 5)},
    ]
    (after / "judgments.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs2), encoding="utf-8")
    c = compare(summarize(read_judgments(run_dir)), summarize(read_judgments(after)), ("base", "tuned"))
    row = {r["key"]: r for r in c["rows"]}
    assert row["creativity"]["a"] == pytest.approx(50) and row["creativity"]["b"] == pytest.approx(60)
    assert row["creativity"]["delta"] == pytest.approx(10) and (row["creativity"]["n_a"], row["creativity"]["n_b"]) == (
        3,
        3,
    )
    assert row["overall"]["b"] == pytest.approx(70) and row["overall"]["delta"] == pytest.approx(-15)
    # tuned combined, weight 1: (47+9)/7 = 8, (42+7)/7 = 7, (30+5)/7 = 5 → mean 20/3
    assert row["combined"]["b"] == pytest.approx(200 / 3)
    assert row["combined"]["delta"] == pytest.approx(200 / 3 - 1250 / 21)

    out_dir = tmp_path / "cmp"
    assert (
        main(["judge", "stats", str(run_dir), "--compare", str(after), "--names", "base,tuned", "--out", str(out_dir)])
        == 0
    )
    printed = capsys.readouterr().out
    assert "base" in printed and "tuned" in printed and "+10.0" in printed
    md = (out_dir / "compare.md").read_text(encoding="utf-8")
    assert "| Creativity / 创造性 | 50.0 | 60.0 | +10.0 | 3 | 3 |" in md
    assert "| Overall Score / 总体评分 | 85.0 | 70.0 | -15.0 | 2 | 3 |" in md
    with Image.open(out_dir / "compare.png") as im:
        assert im.format == "PNG" and im.size[0] >= 600
    saved = json.loads((out_dir / "compare.json").read_text(encoding="utf-8"))
    assert saved["names"] == ["base", "tuned"] and len(saved["rows"]) == 8


def test_bad_files(tmp_path, capsys):
    with pytest.raises(JudgmentsFileError, match="no judgments file"):
        read_judgments(tmp_path)
    p = tmp_path / "judgments.jsonl"
    p.write_text('{"id": "A", "turn": 1, "scores": {"creativity": 11}}\n', encoding="utf-8")
    with pytest.raises(JudgmentsFileError, match=r"judgments.jsonl:1: bad score 'creativity': 11"):
        read_judgments(p)
    p.write_text('{"id": "A", "turn": 1}\nnot json\n', encoding="utf-8")
    assert main(["judge", "stats", str(tmp_path)]) == 2
    assert "judgments.jsonl:2: not valid JSON" in capsys.readouterr().err
    assert main(["judge", "stats", str(tmp_path / "nowhere")]) == 2
    assert main(["judge", "stats", str(tmp_path), "--overall-weight", "-1"]) == 2
