"""Reward plugins (``reward_file``: *_reward functions), weights, and ``geovl rewards score``."""

from __future__ import annotations

import json
import math
import textwrap

import pytest

from geovl.rewards import DEFAULT_REWARDS, RewardPluginError, load_reward_file, resolve_rewards
from geovl.train.recipe import RecipeError
from sft_util import run_cli

PLUGIN = '''
import math

LIMIT = 4


def short_reward(completions, **kwargs):
    """1.0 for answers of at most LIMIT characters."""
    return [1.0 if len(_text(c)) <= LIMIT else 0.0 for c in completions]


def mentions_reward(completions, answer=None, **kwargs):
    return [1.0 if a and a in _text(c) else 0.0 for c, a in zip(completions, answer)]


def _text(c):
    return c[0]["content"] if isinstance(c, list) else c


def helper(x):
    return x
'''


@pytest.fixture
def plugin(tmp_path):
    p = tmp_path / "my_rewards.py"
    p.write_text(PLUGIN)
    return p


def test_plugin_discovery_finds_only_reward_functions_defined_in_the_file(plugin):
    found = load_reward_file(plugin)
    assert sorted(found) == ["mentions_reward", "short_reward"]  # not helper, _text, math
    assert found["short_reward"](["abc", "abcdef"]) == [1.0, 0.0]


def test_plugin_functions_join_the_builtins_with_weights(plugin):
    funcs, names, weights = resolve_rewards(None, plugin, {"short_reward": 0.5, "count_reward": 2})
    assert names == [*DEFAULT_REWARDS, "mentions_reward", "short_reward"]
    assert weights == [2.0 if n == "count_reward" else 1.0 for n in DEFAULT_REWARDS] + [1.0, 0.5]
    assert [f.__name__ for f in funcs] == names
    funcs, names, weights = resolve_rewards([], plugin)  # plugin only
    assert names == ["mentions_reward", "short_reward"] and weights == [1.0, 1.0]
    funcs, names, weights = resolve_rewards(["rs_reward", "format_reward"], None, {"format_reward": 0.1})
    assert names == ["rs_reward", "format_reward"] and weights == [1.0, 0.1]


def test_unknown_weight_names_list_the_discovered_rewards(plugin):
    with pytest.raises(RecipeError) as e:
        resolve_rewards(["rs_reward"], plugin, {"shrot_reward": 1.0})
    msg = str(e.value)
    assert "'shrot_reward'" in msg and "rs_reward, mentions_reward, short_reward" in msg
    with pytest.raises(RecipeError, match="unknown built-in reward.*'nope_reward'"):
        resolve_rewards(["nope_reward"])
    with pytest.raises(RecipeError, match="finite number"):
        resolve_rewards(["rs_reward"], None, {"rs_reward": "heavy"})
    with pytest.raises(RecipeError, match="no reward functions"):
        resolve_rewards([], None)


@pytest.mark.parametrize(
    "source,message",
    [
        ("def broken_reward(completions, **kw)\n    return []\n", "syntax error on line 1"),
        ("import not_a_module_anywhere\n", "importing it failed: ModuleNotFoundError"),
        ("def helper(x):\n    return x\n", "no reward function found.*functions in the file: helper"),
        ("def strict_reward(completions):\n    return []\n", r"strict_reward must accept \(completions, \*\*kwargs\)"),
        ("def count_reward(completions, **kw):\n    return []\n", "has the name of a built-in reward"),
    ],
)
def test_broken_plugins_are_named(tmp_path, source, message):
    p = tmp_path / "bad_rewards.py"
    p.write_text(source)
    with pytest.raises(RewardPluginError, match=message) as e:
        resolve_rewards(None, p)
    assert str(p) in str(e.value)


def test_missing_or_non_python_plugin(tmp_path):
    with pytest.raises(RewardPluginError, match="not found"):
        load_reward_file(tmp_path / "nope.py")
    (tmp_path / "r.txt").write_text("x")
    with pytest.raises(RewardPluginError, match="must be a Python file"):
        load_reward_file(tmp_path / "r.txt")


# ----------------------------------------------------------------------------------- CLI


def _json(capsys, *argv):
    from geovl.cli import main

    capsys.readouterr()
    rc = main([str(a) for a in argv])
    cap = capsys.readouterr()
    return rc, (json.loads(cap.out) if rc == 0 else None), cap.err


def test_rewards_score_one_answer(capsys):
    rc, out, err = _json(
        capsys,
        "rewards",
        "score",
        "--question",
        "耕地面积约为多少平方公里？",
        "--prediction",
        "约1.5平方公里",
        "--reference",
        "150 ha",
    )
    assert rc == 0, err
    assert out["kind"] == "number" and out["routed_by"] == "question"
    assert out["rewards"]["number_reward"] == 1.0 and out["rewards"]["count_reward"] is None
    assert out["rs_reward"] == 1.0 and out["total"] == 1.0
    assert out["selected"] == list(DEFAULT_REWARDS)

    rc, out, err = _json(
        capsys, "rewards", "score", "--qtype", "count", "--prediction", "There are 4.", "--reference", "3", "--compact"
    )
    assert rc == 0 and out["kind"] == "count" and out["routed_by"] == "qtype"
    assert out["rs_reward"] == pytest.approx(math.exp(-1)) and out["rewards"]["format_reward"] == 0.0

    rc, out, err = _json(
        capsys,
        "rewards",
        "score",
        "--qtype",
        "area",
        "--prediction",
        "12.34公顷",
        "--reference",
        "约12公顷",
        "--meta",
        '{"gt": {"m2": 123400}}',
    )
    assert rc == 0 and out["rs_reward"] == 1.0


def test_rewards_score_with_a_plugin_and_weights(capsys, plugin):
    rc, out, err = _json(
        capsys,
        "rewards",
        "score",
        "--question",
        "Is there water?",
        "--prediction",
        "yes",
        "--reference",
        "yes",
        "--reward-file",
        plugin,
        "--rewards",
        "rs_reward",
        "--weights",
        '{"short_reward": 0.5, "mentions_reward": 2}',
    )
    assert rc == 0, err
    assert out["rewards"]["short_reward"] == 1.0 and out["rewards"]["mentions_reward"] == 1.0
    assert out["selected"] == ["rs_reward", "mentions_reward", "short_reward"]
    assert out["total"] == pytest.approx(1.0 + 2.0 + 0.5)


def test_rewards_score_errors(capsys, tmp_path):
    bad = tmp_path / "broken.py"
    bad.write_text("def x_reward(:\n")
    rc, _, err = _json(capsys, "rewards", "score", "--prediction", "a", "--reference", "b", "--reward-file", bad)
    assert rc == 2 and str(bad) in err and "syntax error" in err and "Traceback" not in err
    rc, _, err = _json(capsys, "rewards", "score", "--prediction", "a")
    assert rc == 2 and "--reference" in err
    rc, _, err = _json(
        capsys, "rewards", "score", "--prediction", "a", "--reference", "b", "--weights", '{"zzz_reward": 1}'
    )
    assert rc == 2 and "zzz_reward" in err and "count_reward" in err
    rc, _, err = _json(capsys, "rewards", "score", "--prediction", "a", "--reference", "b", "--meta", "[1]")
    assert rc == 2 and "--meta" in err


def test_rewards_score_a_predictions_file(capsys, tmp_path):
    recs = [
        {"id": "a", "qtype": "count", "question": "How many?", "reference": "3", "prediction": "3"},
        {"id": "b", "qtype": "count", "question": "How many?", "reference": "3", "prediction": "4"},
        {"id": "c", "qtype": "area", "question": "面积？", "reference": "150 ha", "prediction": "1.5 km2"},
        {"id": "d", "qtype": "yes_no", "question": "Water?", "reference": "yes", "prediction": None},
    ]
    f = tmp_path / "preds.jsonl"
    f.write_text("".join(json.dumps(r) + "\n" for r in recs))
    rc, out, err = _json(capsys, "rewards", "score", "--predictions", f)
    assert rc == 0, err
    assert out["n"] == 4
    assert out["by_qtype"]["count"] == {"n": 2, "mean_rs_reward": pytest.approx((1 + math.exp(-1)) / 2, abs=1e-6)}
    assert out["by_qtype"]["area"]["mean_rs_reward"] == 1.0 and out["by_qtype"]["yes_no"]["mean_rs_reward"] == 0.0
    assert out["mean_rs_reward"] == pytest.approx((2 + math.exp(-1)) / 4, abs=1e-6)
    assert out["means"]["count_reward"]["n"] == 2 and out["means"]["open_reward"] == {"n": 0, "mean": None}


def test_grpo_recipe_reward_errors_stop_before_any_model_loads(capsys, tmp_path, plugin):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        textwrap.dedent(f"""\
        model: {tmp_path / "no-model-here"}
        train_data: [{tmp_path / "no-data.parquet"}]
        output_dir: {tmp_path / "out"}
        reward_file: {plugin}
        reward_weights: {{short_reward: 1.0, typo_reward: 2.0}}
        report_to: []
    """)
    )
    rc, err = run_cli(capsys, "train", "grpo", recipe)
    assert rc == 2 and "typo_reward" in err and "mentions_reward, short_reward" in err
    assert not (tmp_path / "out").exists()
    bad = tmp_path / "broken.py"
    bad.write_text("def x_reward(:\n")
    rc, err = run_cli(capsys, "train", "grpo", recipe, f"reward_file={bad}", "reward_weights={}")
    assert rc == 2 and str(bad) in err and "syntax error" in err
    rc, err = run_cli(capsys, "train", "grpo", recipe, "reward_weights={}", "num_generations=3", "batch_size=4")
    assert rc == 2 and "multiple of num_generations=3" in err
