"""Reward functions with TRL's contract ``f(completions, **kwargs) -> list[float | None]``.

``completions`` are plain strings or TRL conversational completions
(``[[{"role": "assistant", "content": str}], ...]``); ``kwargs`` carry the dataset columns, one
value per completion: ``answer`` (the reference; ``solution`` is accepted too), ``qtype``,
``question`` (else the last user turn of ``prompts`` is used) and ``meta`` (a dict or JSON text).
TRL also passes ``prompts``, ``completion_ids``, ``trainer_state``, ... — ignored here.

- :func:`rs_reward` (also named :func:`routed_reward`) — the routed total: each completion is scored by
  the rule of its sample's kind (:func:`geovl.rewards.route.route`). Always a float in [0, 1].
- :func:`yes_no_reward`, :func:`count_reward`, :func:`number_reward`, :func:`choice_reward`,
  :func:`open_reward`, :func:`grounding_reward`, :func:`date_reward` — the same rules, each returning ``None`` for
  samples of another kind. TRL treats ``None`` as "not applicable" (NaN-aware sums and means), so using all of them as separate
  reward functions gives the same total as ``rs_reward`` and logs a mean per question type
  (``rewards/count_reward/mean``). This is the GRPO default (:data:`DEFAULT_REWARDS`).
- :func:`grounding_reward` (IoU / IoU-weighted F1 of boxes, also part of the defaults),
  :func:`box_count_reward` (count agreement from boxes) and :func:`box_format_reward` (boxes readable)
  — for qtype ``grounding`` samples, ``None`` for the others.
- :func:`format_reward` (``<answer>…</answer>`` tags) and :func:`brevity_reward` (length penalty) —
  optional shaping terms for every sample.
"""

from __future__ import annotations

import json

from ..data.schema import message_text
from . import rules
from .route import route

__all__ = [
    "BUILTIN_REWARDS",
    "DEFAULT_REWARDS",
    "brevity_reward",
    "choice_reward",
    "completion_text",
    "box_count_reward",
    "box_format_reward",
    "count_reward",
    "date_reward",
    "format_reward",
    "grounding_reward",
    "number_reward",
    "open_reward",
    "routed_reward",
    "rs_reward",
    "yes_no_reward",
]


MAX_CHARS = 20000  # longer completions keep their first and last 10000 characters (see completion_text)


def completion_text(c) -> str:
    """The text of one completion: a string, a message dict, or a list of messages (last one wins).

    Answers are short; a completion over :data:`MAX_CHARS` characters keeps its first and last
    ``MAX_CHARS / 2`` (the answer of a plain reply is at the start, the ``<answer>`` of a reasoning
    reply at the end) — this bounds the cost of scoring junk (the markup regexes of the evaluation
    normaliser are quadratic in the number of unclosed tags)."""
    t = _completion_text(c)
    if len(t) > MAX_CHARS:
        half = MAX_CHARS // 2
        t = t[:half] + "\n" + t[-half:]
    return t


def _completion_text(c) -> str:
    if c is None:
        return ""
    if isinstance(c, str):
        return c
    if isinstance(c, dict):
        content = c.get("content")
        if isinstance(content, list):
            return "".join(
                p.get("text") or "" for p in content if isinstance(p, dict) and p.get("type", "text") == "text"
            )
        return "" if content is None else str(content)
    if isinstance(c, (list, tuple)):
        msgs = [m for m in c if isinstance(m, dict)]
        assistant = [m for m in msgs if m.get("role", "assistant") == "assistant"]
        return _completion_text((assistant or msgs)[-1]) if msgs else ""
    return str(c)


def _column(kwargs: dict, names: tuple[str, ...], n: int, required: str | None = None) -> list:
    for name in names:
        v = kwargs.get(name)
        if v is not None:
            if isinstance(v, (str, bytes, dict)) or not hasattr(v, "__len__"):
                v = [v] * n  # one value for the whole batch
            v = list(v)
            if len(v) != n:
                raise ValueError(f"reward column {name!r} has {len(v)} values for {n} completions")
            return v
    if required:
        raise ValueError(
            f"{required} needs the reference answers: the dataset must have an 'answer' (or 'solution') column "
            f"(got columns: {', '.join(sorted(k for k in kwargs if not k.startswith(('log_', 'trainer_'))))})"
        )
    return [None] * n


def _meta(m) -> dict | None:
    if isinstance(m, dict):
        return m
    if isinstance(m, str) and m.strip().startswith("{"):
        try:
            d = json.loads(m)
        except ValueError:
            return None
        return d if isinstance(d, dict) else None
    return None


def _question_from_prompt(prompt) -> str:
    if isinstance(prompt, str):
        return prompt
    if isinstance(prompt, (list, tuple)):
        for m in reversed(prompt):
            if isinstance(m, dict) and m.get("role") == "user":
                content = m.get("content")
                if isinstance(content, list):
                    return message_text({"content": [p for p in content if isinstance(p, dict)]})
                return "" if content is None else str(content)
    return ""


def _rows(completions, kwargs: dict, name: str):
    """(kind, prediction, reference, meta) per completion."""
    n = len(completions)
    answers = _column(kwargs, ("answer", "solution"), n, required=name)
    qtypes = _column(kwargs, ("qtype",), n)
    questions = _column(kwargs, ("question",), n)
    if all(q is None for q in questions):
        prompts = _column(kwargs, ("prompts", "prompt"), n)
        questions = [_question_from_prompt(p) for p in prompts]
    metas = _column(kwargs, ("meta",), n)
    for c, a, t, q, m in zip(completions, answers, qtypes, questions, metas):
        kind, _ = route(t, q)
        yield kind, completion_text(c), "" if a is None else str(a), _meta(m)


def rs_reward(completions, **kwargs) -> list[float]:
    """Routed total: each completion scored by its sample's rule (see the module docstring)."""
    return [rules.score(kind, p, r, m) for kind, p, r, m in _rows(completions, kwargs, "rs_reward")]


def routed_reward(completions, **kwargs) -> list[float]:
    """Another name of :func:`rs_reward`."""
    return rs_reward(completions, **kwargs)


def _kind_reward(kind: str):
    def reward(completions, **kwargs) -> list[float | None]:
        return [
            rules.score(kind, p, r, m) if k == kind else None
            for k, p, r, m in _rows(completions, kwargs, f"{kind}_reward")
        ]

    reward.__name__ = reward.__qualname__ = f"{kind}_reward"
    reward.__doc__ = f"The {kind} rule for samples routed to {kind!r}; None (not applicable) for the others."
    return reward


yes_no_reward = _kind_reward("yes_no")
count_reward = _kind_reward("count")
number_reward = _kind_reward("number")
choice_reward = _kind_reward("choice")
open_reward = _kind_reward("open")
grounding_reward = _kind_reward("grounding")
date_reward = _kind_reward("date")


def _box_reward(rule, name: str):
    def reward(completions, **kwargs) -> list[float | None]:
        return [rule(p, r, meta=m) if k == "grounding" else None for k, p, r, m in _rows(completions, kwargs, name)]

    reward.__name__ = reward.__qualname__ = name
    return reward


box_count_reward = _box_reward(rules.box_count_score, "box_count_reward")
box_count_reward.__doc__ = "Count agreement from boxes (grounding samples; None for the others)."
box_format_reward = _box_reward(lambda p, r, meta=None: rules.box_format_score(p, meta=meta), "box_format_reward")
box_format_reward.__doc__ = "1.0 when boxes can be read from the answer (grounding samples; None for the others)."


def format_reward(completions, **kwargs) -> list[float]:
    """1.0 for ``<answer>…</answer>`` and nothing else, 0.5 with other text around it, else 0.0."""
    return [rules.format_score(completion_text(c)) for c in completions]


def brevity_reward(completions, **kwargs) -> list[float]:
    """1.0 up to ``max(8, 2·len(reference))`` characters, then ``budget / length``."""
    refs = _column(kwargs, ("answer", "solution"), len(completions), required="brevity_reward")
    return [rules.brevity_score(completion_text(c), "" if r is None else str(r)) for c, r in zip(completions, refs)]


BUILTIN_REWARDS = {
    f.__name__: f
    for f in (
        rs_reward, routed_reward, yes_no_reward, count_reward, number_reward, choice_reward, open_reward,
        grounding_reward, box_count_reward, box_format_reward, format_reward, brevity_reward, date_reward,
    )
}  # fmt: skip
DEFAULT_REWARDS = (
    "yes_no_reward",
    "count_reward",
    "number_reward",
    "choice_reward",
    "open_reward",
    "grounding_reward",
    "date_reward",
)
