"""Multi-turn generation over a benchmark file (``geovl eval --dialogue``), the MMDU way.

A dialogue sample (e.g. converted from MMDU / MMDU-45k by ``geovl data convert --from llava``)
has several user/assistant turns with images placed where the ``<image>`` tags were. The model
answers turn by turn; the history it sees holds its OWN earlier answers (the reference assistant
turns are replaced by the model's answers), with every image in place. Turn ``k``'s request is::

    [system] user_1 model_answer_1 user_2 model_answer_2 ... user_k      (+ images of user_1..k)

One JSONL record per dialogue, in dataset order::

    {"id", "source", "qtype", "lang", "meta",
     "turns": [{"question", "reference", "prediction", "n_images"}, ...]}

``n_images`` counts the images of that turn's user message(s). A turn is every assistant
message (its question: the user message(s) since the previous assistant message); user
messages after the last assistant message form a last turn with ``reference: null``.

Dialogues are processed in chunks; within a chunk all first turns are generated in one
``engine.generate`` call, then all second turns, ... (batched across dialogues per turn index).
A dialogue is written when all its turns are answered, so ``resume=True`` skips the ids already
in the output and redoes only unfinished dialogues. Unusable samples (schema errors, undecodable
images) go to ``<out stem>.rejects.jsonl``: read = written + rejected (+ skipped on resume).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from ..data.schema import SampleError, assistant_turn, count_image_parts, message_text, validate_sample
from ..inference.engine import ChatRequest, GenerationParams
from .generate import SAMPLE_ERRORS, _generate_or_isolate, run_chunked


@dataclass
class Turn:
    messages: list[dict]  # the user message(s) of this turn
    reference: str | None
    n_images: int

    @property
    def question(self) -> str:
        return "\n".join(t for t in (message_text(m) for m in self.messages) if t)


@dataclass
class Dialogue:
    sample: dict
    system: list[dict]
    turns: list[Turn]
    predictions: list[str] = field(default_factory=list)
    error: Exception | None = None  # one of SAMPLE_ERRORS (reason, detail): the dialogue is rejected

    def request(self, k: int) -> ChatRequest:
        """Turn ``k``'s prompt: the model's own answers to turns < k in the history."""
        msgs = list(self.system)
        for j in range(k):
            msgs += self.turns[j].messages
            msgs.append(assistant_turn(self.predictions[j]))  # an empty answer stays empty
        msgs += self.turns[k].messages
        n = count_image_parts(msgs)
        nv = sum(1 for m in msgs for p in m["content"] if p.get("type") == "video")
        return ChatRequest(msgs, list(self.sample["images"][:n]), list((self.sample.get("videos") or [])[:nv]))

    def record(self) -> dict:
        s = self.sample
        meta = s.get("meta") or {}
        return {
            "id": s["id"],
            "source": s["source"],
            "qtype": s["qtype"],
            "lang": meta.get("lang", meta.get("language")),
            "turns": [
                {"question": t.question, "reference": t.reference, "prediction": p, "n_images": t.n_images}
                for t, p in zip(self.turns, self.predictions)
            ],
            "meta": meta,
        }


def split_dialogue(sample: dict) -> Dialogue:
    """The turns of a sample; raises :class:`SampleError` when it has no user turn to answer."""
    validate_sample(sample)
    msgs = sample["messages"]
    system = [m for m in msgs[:1] if m["role"] == "system"]
    turns: list[Turn] = []
    pending: list[dict] = []
    for i, m in enumerate(msgs):
        if m["role"] == "system":
            if i > 0:
                raise SampleError(
                    "bad_roles", f"system message at position {i} (only the first message may be a system message)"
                )
            continue
        if m["role"] == "user":
            pending.append(m)
        else:
            if not pending:
                raise SampleError("bad_roles", f"assistant message {i} does not follow a user message")
            turns.append(Turn(pending, message_text(m), count_image_parts(pending)))
            pending = []
    if pending:
        turns.append(Turn(pending, None, count_image_parts(pending)))
    if not turns:
        raise SampleError("empty_question", "no user turn")
    return Dialogue(sample, system, turns)


def answer_chunk(engine, dialogues: list[Dialogue], params: GenerationParams) -> None:
    """Fill ``predictions`` of every dialogue, one ``generate`` call per turn index (a dialogue
    whose images cannot be decoded gets ``error`` and drops out)."""
    for d in dialogues:
        d.predictions = []
    max_turns = max((len(d.turns) for d in dialogues), default=0)
    for k in range(max_turns):
        active = [d for d in dialogues if d.error is None and k < len(d.turns)]
        if not active:
            break
        preds = _generate_or_isolate(engine, [d.request(k) for d in active], params)
        for d, p in zip(active, preds):
            if isinstance(p, SAMPLE_ERRORS):  # an undecodable image or a prompt past the context
                d.error = p
            else:
                d.predictions.append(str(p))


def run_dialogues(
    engine,
    data: str | os.PathLike,
    out: str | os.PathLike,
    params: GenerationParams | None = None,
    limit: int | None = None,
    resume: bool = False,
    progress: bool = True,
    chunk_size: int | None = None,
) -> dict:
    """Answer every dialogue of ``data`` (the first ``limit``) into ``out``; returns the counts
    ``{read, predicted, turns, skipped, rejected, out, engine}``."""
    params = params or GenerationParams()
    chunk_size = chunk_size or int(getattr(engine, "batch_size", None) or getattr(engine, "concurrency", 8))
    turns = 0

    def answer(dialogues: list[Dialogue]) -> list:
        nonlocal turns
        answer_chunk(engine, dialogues, params)
        turns += sum(len(d.turns) for d in dialogues if d.error is None)
        return [d.error if d.error is not None else d.record() for d in dialogues]

    counts = run_chunked(
        data,
        out,
        split_dialogue,
        answer,
        limit=limit,
        resume=resume,
        progress=progress,
        chunk_size=chunk_size,
        desc=f"dialogues ({engine.name})",
        unit="dialogue",
    )
    counts["turns"] = turns
    counts["engine"] = engine.stats.as_dict()
    return counts


def print_dialogue_summary(counts: dict) -> None:
    line = (
        f"answered {counts['predicted']} of {counts['read']} dialogues ({counts['turns']} turns)"
        + (f", skipped {counts['skipped']} already in {counts['out']}" if counts["skipped"] else "")
        + (f", rejected {counts['rejected']} (see the .rejects.jsonl)" if counts["rejected"] else "")
        + f" → {counts['out']} / 多轮对话已生成"
    )
    print(line)
    eng = counts["engine"]
    if eng.get("forward_calls") and eng.get("samples"):
        print(
            f"LLM forward calls: {eng['forward_calls']}, generated tokens: {eng['generated_tokens']} over {eng['samples']} answers"
        )
    print(f"next: geovl judge --answers {counts['out']} --model JUDGE --out DIR / 下一步：用评审模型打分")
