"""geovl data synth --tasks grounded: the user turn is exactly what `geovl ask` builds for the same scene
and question, and the answer quotes the measured number (equal to the exact synth truth)."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from geovl.cli import main
from geovl.data.io import read_samples
from geovl.data.schema import message_text, validate_sample
from geovl.evaluate.normalize import parse_quantity
from geovl.geo.ask import build_grounded
from geovl.geo.units import all_units, fmt
from geovl.synth import SynthError, qa, synthesize
from geovl.synth.write import parse_tasks

N_SCENES = 3


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("grounded") / "s"
    summary = synthesize(out, scenes=N_SCENES, seed=0, size=224, tasks="grounded", split="train=1", progress=False)
    rows = list(read_samples(out / "train.parquet"))
    scenes = {json.loads(x)["id"]: json.loads(x) for x in (out / "scenes.jsonl").read_text("utf-8").splitlines()}
    return out, summary, rows, scenes


def ask_inputs(out, scene, dates):
    """The files `geovl ask` is given for a sample's dates (as a user would pass them)."""
    after = dates[-1]
    kw = {"image_path": out / scene["geotiffs"][after], "classes": out / scene["class_maps"][after]}
    if len(dates) == 2:
        kw |= {"before_path": out / scene["geotiffs"]["before"], "before_classes": out / scene["class_maps"]["before"]}
    return kw


def test_samples_validate_and_tasks(run):
    out, summary, rows, scenes = run
    assert (out / "train.rejects.jsonl").read_text() == "" and summary["samples"] == len(rows) > 0
    assert set(summary["by_task"]) == {"grounded_area", "grounded_change"} and summary["by_qtype"] == {
        "area": len(rows)
    }
    for r in rows:
        validate_sample(r)
        m = r["meta"]
        assert r["qtype"] == "area" and m["task"] in qa.GROUNDED_TASKS
        assert len(r["images"]) == len(m["dates"]) == (2 if m["task"] == "grounded_change" else 1)
        assert m["image_files"] == [scenes[m["scene"]]["geotiffs"][d] for d in m["dates"]]
    per = Counter((r["meta"]["scene"], r["meta"]["lang"], r["meta"]["task"]) for r in rows)
    assert {k[2] for k in per} == set(qa.GROUNDED_TASKS)


def test_context_equals_what_ask_builds(run):
    out, _, rows, scenes = run
    for r in rows:
        m = r["meta"]
        gp = build_grounded(question=m["question"], lang=m["lang"], **ask_inputs(out, scenes[m["scene"]], m["dates"]))
        assert message_text(r["messages"][0]) == gp.prompt, r["id"]
        assert r["images"] == gp.images, r["id"]
        assert r["messages"][0]["content"][: len(gp.images)] == [{"type": "image"}] * len(gp.images)
        # language detected from the question gives the same prompt
        assert (
            build_grounded(
                question=m["question"], measurement=gp.measurement, **ask_inputs(out, scenes[m["scene"]], m["dates"])
            ).prompt
            == gp.prompt
        )


def test_answers_quote_the_measured_number(run):
    out, _, rows, scenes = run
    kinds = Counter()
    for r in rows:
        m, gt = r["meta"], r["meta"]["gt"]
        sc = scenes[m["scene"]]
        kinds[gt["kind"]] += 1
        # the measured area is the exact truth: pixels x 100 m²
        assert gt["m2"] == gt["pixels"] * 100.0
        if gt["kind"] == "area":
            assert gt["pixels"] == sc[gt["date"]]["class_pixels"][gt["class"]]
        elif gt["kind"] == "changed":
            assert gt["pixels"] == sc["change"]["changed_pixels"]
        else:
            pair = {
                k: v
                for k, v in sc["change"]["transitions"].items()
                if (k.split("->")[1] if gt["kind"] == "gain" else k.split("->")[0]) == gt["class"]
            }
            assert gt["pixels"] == sum(pair.values()) > 0
        num = fmt(all_units(gt["m2"])[gt["unit"]], gt["unit"])
        u = qa.UNITS[gt["unit"]]
        assert (
            r["answer"]
            == (f"约{num}{u.zh}" if m["lang"] == "zh" else f"about {num} {u.en}")
            == message_text(r["messages"][1])
        )
        assert gt["answer_value"] == num and num in message_text(r["messages"][0])  # quoted from the context
        value, kind = parse_quantity(r["answer"])  # what a numeric reward reads
        half = 0.5 * 10 ** -gt["decimals"] * float(u.m2)
        assert kind == "area" and abs(value - gt["m2"]) <= half + 1e-9 * gt["m2"]
    assert set(kinds) >= {"area", "changed"} and kinds["gain"] + kinds["loss"] > 0


def test_ask_cli_prompt_matches_a_synth_sample(run, tiny_model_dir, capsys):
    out, _, rows, scenes = run
    r = next(x for x in rows if x["meta"]["task"] == "grounded_change" and x["meta"]["lang"] == "zh")
    kw = ask_inputs(out, scenes[r["meta"]["scene"]], r["meta"]["dates"])
    argv = [
        "ask",
        "--image",
        str(kw["image_path"]),
        "--before",
        str(kw["before_path"]),
        "--classes",
        str(kw["classes"]),
        "--before-classes",
        str(kw["before_classes"]),
        "--question",
        r["meta"]["question"],
        "--model",
        str(tiny_model_dir("qwen2-vl")),
        "--device",
        "cpu",
        "--max-new-tokens",
        "4",
        "--json",
    ]
    assert main(argv) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["prompt"] == message_text(r["messages"][0])
    assert r["meta"]["gt"]["answer_value"] in doc["context"]


def test_task_selection_keeps_defaults(tmp_path, capsys):
    assert parse_tasks("all") == parse_tasks(None) == qa.TASKS
    assert parse_tasks("all,grounded") == qa.ALL_TASKS and parse_tasks("grounded_change") == ("grounded_change",)
    with pytest.raises(SynthError, match="grounded"):
        parse_tasks("grounded_areas")
    s = synthesize(
        tmp_path / "mix",
        scenes=1,
        size=96,
        langs="en",
        tasks="all,grounded",
        questions_per_scene=10,
        split="train=1",
        progress=False,
    )
    assert s["by_task"] == {t: 1 for t in qa.ALL_TASKS}
    out = tmp_path / "cli"
    assert (
        main(
            [
                "data",
                "synth",
                "--out",
                str(out),
                "--scenes",
                "1",
                "--size",
                "96",
                "--lang",
                "zh",
                "--tasks",
                "grounded_area",
                "--questions-per-scene",
                "2",
                "--no-progress",
            ]
        )
        == 0
    )
    assert json.loads(capsys.readouterr().out)["by_task"] == {"grounded_area": 2}
