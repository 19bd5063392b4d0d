"""Engine capabilities (geovl.inference.capabilities) and the one GeoVLError handler of ``geovl``."""

from __future__ import annotations

import pytest

from geovl.errors import GeoVLError
from geovl.inference import ChoiceScorer, InputSpec, can_score_choices, cube_reader, input_spec
from geovl.models.preprocess import PreprocessConfig


class Plain:  # generate/stream only, declares nothing
    name = "plain"

    def generate(self, requests, params):
        return ["x"] * len(requests)


class Scorer(Plain):
    def choice_logprobs(self, requests, candidates):
        return [[0.0] * len(c) for c in candidates]


class Cubes(Plain):
    inputs = InputSpec(kind="cube", n_bands=5)

    def cube(self, item):
        return item


def test_capabilities_of_declared_and_undeclared_engines():
    assert input_spec(Plain()) == InputSpec() and not input_spec(Plain()).reads_cubes
    assert not can_score_choices(Plain()) and can_score_choices(Scorer()) and isinstance(Scorer(), ChoiceScorer)
    assert cube_reader(Plain()) is None and cube_reader(Scorer()) is None
    c = Cubes()
    assert cube_reader(c) is c and input_spec(c).n_bands == 5
    half = Plain()
    half.inputs = InputSpec(kind="cube", n_bands=5)  # says cubes but has no cube(): not a cube reader
    assert cube_reader(half) is None
    pre = PreprocessConfig(rgb_bands=[3, 2, 1])
    e = Plain()
    e.inputs = InputSpec(preprocess=pre)
    assert input_spec(e).preprocess is pre
    e.inputs = {"kind": "cube"}  # not an InputSpec: ignored, the default applies
    assert input_spec(e) == InputSpec()
    with pytest.raises(ValueError, match="kind"):
        InputSpec(kind="video")


def test_local_engine_declares_its_capabilities(tiny_model_dir):
    from geovl.inference import LocalEngine

    eng = LocalEngine(str(tiny_model_dir("qwen2.5-vl")), device="cpu", batch_size=2)
    try:
        assert eng.inputs == InputSpec(kind="image", preprocess=eng.preprocess)
        assert can_score_choices(eng) and cube_reader(eng) is None
    finally:
        eng.close()


def test_cli_prints_any_geovl_error_once_with_hint_and_exit_code(monkeypatch, capsys):
    import geovl.commands.score as score_cmd
    from geovl.cli import main
    from geovl.data.io import DatasetFileError

    def boom(args):
        raise GeoVLError(f"{args.preds}: broken", hint="rerun `geovl eval`", exit_code=3)

    monkeypatch.setattr(score_cmd, "run", boom)
    assert main(["score", "p.jsonl"]) == 3
    assert capsys.readouterr().err.splitlines() == ["geovl: error: p.jsonl: broken", "geovl: hint: rerun `geovl eval`"]

    def library_error(args):  # a library's own subclass (no CLIError wrapping) is printed the same way
        raise DatasetFileError("d.parquet: not a dataset file")

    monkeypatch.setattr(score_cmd, "run", library_error)
    assert main(["score", "p.jsonl"]) == 2
    assert capsys.readouterr().err.splitlines() == ["geovl: error: d.parquet: not a dataset file"]

    def bug(args):
        raise KeyError("a bug keeps its traceback")

    monkeypatch.setattr(score_cmd, "run", bug)
    with pytest.raises(KeyError):
        main(["score", "p.jsonl"])
