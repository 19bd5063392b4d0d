"""Reward plugins and weights.

A plugin is a Python file (``reward_file: my_rewards.py`` in a GRPO recipe, ``--reward-file`` on
``geovl rewards score``). Every function *defined in that file* whose name ends in ``_reward``
(and does not start with ``_``) is a reward function with TRL's contract
``f(completions, **kwargs) -> list[float | None]`` (see :mod:`geovl.rewards.funcs`); helpers
with other names and functions imported from elsewhere are ignored.

:func:`resolve_rewards` combines the selected built-ins with the plugin's functions and the
weights ``{name: weight}`` (default 1.0 each). Errors are :class:`RewardPluginError` (a file that
does not load, has no ``*_reward`` function, or a name clash) or
:class:`geovl.errors.RecipeError` (also ``geovl.train.recipe.RecipeError``) (unknown built-in names, unknown names in the weights —
the message lists the rewards that were found).
"""

from __future__ import annotations

import hashlib
import importlib.util
import inspect
import math
import sys
from pathlib import Path
from typing import Callable

from ..errors import GeoVLError, RecipeError
from .funcs import BUILTIN_REWARDS

__all__ = ["RewardPluginError", "load_reward_file", "resolve_rewards"]


class RewardPluginError(GeoVLError, ValueError):
    pass


def load_reward_file(path: str | Path) -> dict[str, Callable]:
    """``{name: function}`` of the ``*_reward`` functions defined in the Python file ``path``."""
    p = Path(path)
    if not p.is_file():
        raise RewardPluginError(f"{p}: reward file not found")
    if p.suffix != ".py":
        raise RewardPluginError(f"{p}: a reward file must be a Python file (.py)")
    digest = hashlib.sha1(str(p.resolve()).encode()).hexdigest()[:12]
    mod_name = f"geovl_reward_plugin_{p.stem}_{digest}"
    spec = importlib.util.spec_from_file_location(mod_name, p)
    if spec is None or spec.loader is None:  # pragma: no cover - only for odd paths
        raise RewardPluginError(f"{p}: cannot be imported as a Python module")
    module = importlib.util.module_from_spec(spec)
    sys.modules[mod_name] = module  # so that dataloader workers / pickling can find the functions
    try:
        spec.loader.exec_module(module)
    except SyntaxError as e:
        sys.modules.pop(mod_name, None)
        raise RewardPluginError(f"{p}: syntax error on line {e.lineno}: {e.msg}") from e
    except Exception as e:  # noqa: BLE001 - any error while importing the user's file
        sys.modules.pop(mod_name, None)
        raise RewardPluginError(f"{p}: importing it failed: {type(e).__name__}: {e}") from e
    found = {
        name: fn
        for name, fn in vars(module).items()
        if name.endswith("_reward")
        and not name.startswith("_")
        and inspect.isfunction(fn)
        and fn.__module__ == mod_name
    }
    if not found:
        helpers = sorted(n for n, f in vars(module).items() if inspect.isfunction(f) and f.__module__ == mod_name)
        raise RewardPluginError(
            f"{p}: no reward function found — name them *_reward, e.g. def my_reward(completions, **kwargs) -> list[float]"
            + (f" (functions in the file: {', '.join(helpers)})" if helpers else "")
        )
    for name, fn in found.items():
        params = inspect.signature(fn).parameters.values()
        has_kwargs = any(q.kind is inspect.Parameter.VAR_KEYWORD for q in params)
        positional = [q for q in params if q.kind in (q.POSITIONAL_ONLY, q.POSITIONAL_OR_KEYWORD)]
        if not has_kwargs or not positional:
            raise RewardPluginError(
                f"{p}: {name} must accept (completions, **kwargs) — TRL passes the dataset columns as keyword arguments"
            )
    return found


def resolve_rewards(
    names=None, reward_file: str | Path | None = None, weights: dict | None = None
) -> tuple[list[Callable], list[str], list[float]]:
    """(functions, names, weights) in order: the selected built-ins, then the plugin's functions.

    ``names`` — built-in reward names (``None``: :data:`geovl.rewards.funcs.DEFAULT_REWARDS`; ``[]``: none)."""
    from .funcs import DEFAULT_REWARDS

    names = list(DEFAULT_REWARDS if names is None else names)
    unknown = [n for n in names if n not in BUILTIN_REWARDS]
    if unknown:
        raise RecipeError(
            f"reward_funcs: unknown built-in reward(s) {', '.join(map(repr, unknown))}. "
            f"Built-ins: {', '.join(BUILTIN_REWARDS)} (plugin functions come from reward_file)"
        )
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise RecipeError(f"reward_funcs: {', '.join(dupes)} listed more than once")
    funcs = [(n, BUILTIN_REWARDS[n]) for n in names]
    if reward_file:
        plugin = load_reward_file(reward_file)
        clash = sorted(set(plugin) & set(BUILTIN_REWARDS))
        if clash:
            raise RewardPluginError(
                f"{reward_file}: {', '.join(clash)} has the name of a built-in reward; rename it in the plugin"
            )
        funcs += sorted(plugin.items())
    if not funcs:
        raise RecipeError("no reward functions: set reward_funcs (built-ins) and/or reward_file (a plugin)")
    found = [n for n, _ in funcs]
    weights = dict(weights or {})
    if not all(isinstance(k, str) for k in weights):
        raise RecipeError("reward_weights must map reward names to numbers, e.g. {count_reward: 2.0}")
    bad = sorted(k for k in weights if k not in found)
    if bad:
        raise RecipeError(
            f"reward_weights: unknown reward name(s) {', '.join(map(repr, bad))}; the rewards in use are: {', '.join(found)}"
        )
    ws = []
    for n in found:
        w = weights.get(n, 1.0)
        if isinstance(w, bool) or not isinstance(w, (int, float)) or not math.isfinite(w):
            raise RecipeError(f"reward_weights: {n}: expected a finite number, got {w!r}")
        ws.append(float(w))
    return [f for _, f in funcs], found, ws
