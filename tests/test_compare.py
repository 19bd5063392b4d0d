"""``geovl compare``: before/after tables, changed samples, unmatched ids and the report files."""

from __future__ import annotations

import base64
import io
import json
import re

import pytest
from PIL import Image

from geovl.cli import main
from geovl.evaluate.compare import compare_files

Q_HTML = "What is <b>this</b> | feature?"


def rec(id, qtype, reference, prediction, question="q?"):
    return {"id": id, "qtype": qtype, "question": question, "reference": reference, "prediction": prediction,
            "source": f"hand#{id}", "lang": "en"}  # fmt: skip


BEFORE = [
    rec("y1", "yes_no", "yes", "no"),  # wrong → fixed
    rec("y2", "yes_no", "否", "否"),  # right → broken
    rec("y3", "yes_no", "yes", "yes"),  # right → right
    rec("c1", "count", "3", "5"),  # wrong → fixed
    rec("c2", "count", "2", "2"),  # right → right
    rec("a1", "area", "1 km2", "junk"),  # wrong → fixed
    rec("o1", "open", "河流", "河流", question=Q_HTML),  # right → broken
    rec("b_only", "count", "1", "1"),
]
AFTER = [
    rec("a_only1", "count", "1", "1"),
    rec("y1", "yes_no", "yes", "Yes, there is."),
    rec("y2", "yes_no", "否", "是的"),
    rec("y3", "yes_no", "yes", "yes"),
    rec("c1", "count", "3", "三"),
    rec("c2", "count", "2", "二"),
    rec("a1", "area", "1 km2", "100公顷"),
    rec("o1", "open", "河流", "湖泊", question=Q_HTML),
    rec("a_only2", "choice", "rural", "urban"),
]


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("compare")
    return write_jsonl(d / "base.jsonl", BEFORE), write_jsonl(d / "tuned.jsonl", AFTER)


@pytest.fixture(scope="module")
def report(files, tmp_path_factory):
    """Run the CLI once; returns (out dir, printed text)."""
    out = tmp_path_factory.mktemp("report") / "rep"
    before, after = files
    import contextlib

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        rc = main(["compare", str(before), str(after), "--out", str(out), "--names", "base,tuned"])
    assert rc == 0
    return out, buf.getvalue()


EXPECTED_ROWS = {
    # qtype: (n, before correct, after correct, fixed, broken)
    "yes_no": (3, 2, 2, 1, 1),
    "count": (2, 1, 2, 1, 0),
    "area": (1, 0, 1, 1, 0),
    "open": (1, 1, 0, 0, 1),
}


def test_table_numbers(files):
    res = compare_files(*files)
    assert [r["qtype"] for r in res["by_qtype"]] == list(EXPECTED_ROWS)
    for r in res["by_qtype"]:
        n, bc, ac, fixed, broken = EXPECTED_ROWS[r["qtype"]]
        assert (r["n"], r["before_correct"], r["after_correct"], r["fixed"], r["broken"]) == (n, bc, ac, fixed, broken)
        assert r["before_acc"] == bc / n and r["after_acc"] == ac / n and r["delta"] == (ac - bc) / n
    o = res["overall"]
    assert (o["n"], o["before_correct"], o["after_correct"], o["fixed"], o["broken"]) == (7, 4, 5, 3, 2)
    assert o["before_acc"] == 4 / 7 and o["after_acc"] == 5 / 7
    assert res["macro"]["before_acc"] == pytest.approx((2 / 3 + 1 / 2 + 0 + 1) / 4, abs=1e-15)
    assert res["macro"]["after_acc"] == pytest.approx((2 / 3 + 1 + 1 + 0) / 4, abs=1e-15)
    assert (res["n_before"], res["n_after"], res["n_matched"]) == (8, 9, 7)


def test_changed_rows_and_unmatched_ids(files):
    res = compare_files(*files)
    assert [c["id"] for c in res["fixed"]] == ["y1", "c1", "a1"]
    assert [c["id"] for c in res["broken"]] == ["y2", "o1"]
    y2 = res["broken"][0]
    assert (y2["question"], y2["reference"], y2["before"], y2["after"], y2["change"]) == (
        "q?",
        "否",
        "否",
        "是的",
        "broken",
    )
    assert res["only_in_before"] == ["b_only"]
    assert res["only_in_after"] == ["a_only1", "a_only2"]
    assert res["mismatched"] == []
    # secondary metrics of the matched samples, per side
    assert res["metrics"]["after"]["by_qtype"]["count"]["within_1"] == 1.0
    assert res["metrics"]["before"]["by_qtype"]["count"]["within_1"] == 0.5


def test_cli_prints_table_and_report_path(report):
    out, printed = report
    assert "base acc" in printed and "tuned acc" in printed
    count_line = next(line for line in printed.splitlines() if line.startswith("count"))
    assert re.search(
        r"count\s+2\s+50\.0%\s+100\.0%\s+\+50\.0 pp\s+1\s+0\s+1\s+\[\+0\.0, \+100\.0\] pp\s+no measurable change/无可测变化$",
        count_line,
    )
    overall = next(line for line in printed.splitlines() if line.startswith("overall"))
    assert "57.1%" in overall and "71.4%" in overall and "+14.3 pp" in overall
    assert "1 id(s) only in base" in printed and "2 id(s) only in tuned" in printed
    assert f"report: {out / 'report.html'}" in printed


def test_report_files(report):
    out, _ = report
    for name in ("report.md", "report.html", "chart.png", "compare.json"):
        assert (out / name).is_file(), name
    with Image.open(out / "chart.png") as im:
        im.load()
        assert im.format == "PNG" and im.width >= 600 and im.height >= 400
    data = json.loads((out / "compare.json").read_text(encoding="utf-8"))
    assert data["names"] == ["base", "tuned"] and data["overall"]["fixed"] == 3
    assert data["only_in_after"] == ["a_only1", "a_only2"]
    count = next(r for r in data["by_qtype"] if r["qtype"] == "count")
    assert (
        count["mcnemar_p"] == 1.0 and count["delta_ci95"] == [0.0, 1.0] and count["verdict"] == "no measurable change"
    )
    assert data["overall"]["mcnemar_p"] == 1.0  # 3 fixed vs 2 broken: 2·P(X ≤ 2 | 5, ½) = 2·16/32 → capped at 1


def test_markdown_report(report):
    md = (report[0] / "report.md").read_text(encoding="utf-8")
    assert "![accuracy by question type](chart.png)" in md
    assert (
        "| count | 2 | 50.0% | 100.0% | +50.0 pp | 1 | 0 | 1 | [+0.0, +100.0] pp | no measurable change/无可测变化 |"
        in md
    )
    assert "| overall/总体 (micro) | 7 | 57.1% | 71.4% | +14.3 pp | 3 | 2 | 1 |" in md
    assert "exact McNemar" in md and "paired percentile bootstrap" in md
    assert "## Fixed / 修正 (3)" in md and "## Broken / 退步 (2)" in md
    assert "| y2 | yes_no | q? | 否 | 否 | 是的 |" in md
    assert r"What is <b>this</b> \| feature?" in md  # pipes escaped, table intact
    assert "Only in base / 仅在base中: 1 — b_only" in md
    assert "Only in tuned / 仅在tuned中: 2 — a_only1, a_only2" in md


def test_html_report_is_self_contained(report):
    out, _ = report
    page = (out / "report.html").read_text(encoding="utf-8")
    assert '<meta charset="utf-8">' in page
    assert "What is &lt;b&gt;this&lt;/b&gt; | feature?" in page and "<b>this</b>" not in page
    assert "<th>McNemar p</th>" in page and '<td class="n">[+0.0, +100.0] pp</td>' in page
    assert "chart.png" not in page  # the chart is embedded, not linked
    m = re.search(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert m
    png = base64.b64decode(m.group(1))
    assert png == (out / "chart.png").read_bytes()
    with Image.open(io.BytesIO(png)) as im:
        im.load()
        assert im.format == "PNG"


def test_mismatch_truncation_and_default_out(tmp_path, capsys):
    before = write_jsonl(tmp_path / "b.jsonl", [rec(f"s{i}", "yes_no", "yes", "no") for i in range(5)])
    after_recs = [rec(f"s{i}", "yes_no", "yes", "yes") for i in range(5)]
    after_recs[0]["reference"] = "no"  # same id, different reference → listed
    after = write_jsonl(tmp_path / "a.jsonl", after_recs)
    assert main(["compare", str(before), str(after), "--max-rows", "2"]) == 0
    out = tmp_path / "compare_b_vs_a"
    md = (out / "report.md").read_text(encoding="utf-8")
    assert "## Fixed / 修正 (4)" in md and "_… 2 more in compare.json_" in md
    assert "id s0: qtype yes_no / yes_no, reference 'yes' / 'no'" in md
    data = json.loads((out / "compare.json").read_text(encoding="utf-8"))
    assert len(data["fixed"]) == 4 and data["mismatched"][0]["id"] == "s0"
    assert "1 id(s) with different qtype/reference" in capsys.readouterr().out


def test_errors(tmp_path, files, capsys):
    before, _ = files
    other = write_jsonl(tmp_path / "other.jsonl", [rec("zzz", "count", "1", "1")])
    assert main(["compare", str(before), str(other), "--out", str(tmp_path / "r")]) == 2
    assert "have no sample ids in common" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()
    assert main(["compare", str(before), str(before), "--names", "onlyone"]) == 2
    assert "--names wants two comma-separated names" in capsys.readouterr().err
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "1"}\n', encoding="utf-8")
    assert main(["compare", str(before), str(bad)]) == 2
    assert "bad.jsonl:1: missing required field(s)" in capsys.readouterr().err


# -- uncertainty: exact McNemar and the paired bootstrap interval ------------------------------------


def test_mcnemar_exact_hand_computed():
    from geovl.evaluate.significance import mcnemar_exact

    # 1 fixed, 5 broken: 6 discordant pairs, P(X <= 1) = (C(6,0) + C(6,1)) / 2^6 = 7/64, two-sided 14/64
    assert mcnemar_exact(1, 5) == 14 / 64 == 0.21875
    assert mcnemar_exact(5, 1) == 14 / 64  # symmetric
    # 10 fixed, 2 broken: (1 + 12 + 66) / 4096, doubled = 158/4096 ≈ 0.0386 (significant at 5 %)
    assert mcnemar_exact(10, 2) == 158 / 4096
    assert mcnemar_exact(0, 3) == 2 / 8
    assert mcnemar_exact(4, 4) == 1.0 and mcnemar_exact(0, 0) == 1.0
    # the GRPO stage's presence change in the README: 1 fixed, 0 broken out of 320
    assert mcnemar_exact(1, 0) == 1.0
    assert 0.0 <= mcnemar_exact(0, 3000) < 1e-300  # no overflow for large counts
    with pytest.raises(ValueError):
        mcnemar_exact(-1, 2)
    # docs/benchmarks.md's rule of thumb: a net change of k items has p >= 2^(1-k) (0 broken is the best case)
    for k in range(1, 9):
        assert mcnemar_exact(k, 0) == min(1.0, 2.0 ** (1 - k))
        assert all(mcnemar_exact(k + c, c) >= mcnemar_exact(k, 0) for c in range(60))
    assert mcnemar_exact(5, 0) > 0.05 and mcnemar_exact(6, 0) < 0.05


def test_bootstrap_interval_null_and_large_effect():
    import numpy as np

    from geovl.evaluate.significance import bootstrap_delta_ci, verdict

    null = bootstrap_delta_ci(20, 20, 200)
    assert null[0] < 0 < null[1] and verdict(null) == "no measurable change"
    one_item = bootstrap_delta_ci(1, 0, 320)  # ±1 item in 320: not a measurable change
    assert one_item[0] <= 0 <= one_item[1] and verdict(one_item) == "no measurable change"
    big = bootstrap_delta_ci(60, 5, 200)
    assert 0 < big[0] < 55 / 200 < big[1] and verdict(big) == "gain"
    assert verdict(bootstrap_delta_ci(2, 40, 200)) == "loss"
    assert bootstrap_delta_ci(60, 5, 200) == big  # fixed seed: repeatable
    # same distribution as resampling the pairs themselves (the textbook paired bootstrap)
    d = np.array([1] * 30 + [-1] * 12 + [0] * 158)
    rng = np.random.default_rng(1)
    direct = d[rng.integers(0, d.size, (20000, d.size))].mean(axis=1)
    lo, hi = np.quantile(direct, [0.025, 0.975])
    ours = bootstrap_delta_ci(30, 12, 200)
    assert abs(ours[0] - lo) <= 0.0051 and abs(ours[1] - hi) <= 0.0051
    with pytest.raises(ValueError):
        bootstrap_delta_ci(5, 5, 8)


def test_compare_reports_significance(tmp_path):
    """A large, consistent gain is flagged as a gain with a small p; the table shows both."""
    before = write_jsonl(
        tmp_path / "b.jsonl", [rec(f"s{i}", "yes_no", "yes", "no" if i < 40 else "yes") for i in range(100)]
    )
    after = write_jsonl(
        tmp_path / "a.jsonl", [rec(f"s{i}", "yes_no", "yes", "yes" if i != 99 else "no") for i in range(100)]
    )
    res = compare_files(before, after)
    row = res["by_qtype"][0]
    assert (row["fixed"], row["broken"]) == (40, 1)
    assert row["mcnemar_p"] == 2 * (1 + 41) / 2**41
    assert row["verdict"] == "gain" and row["delta_ci95"][0] > 0.25
