"""The evaluation driver: a dataset file → one prediction record per sample, through an engine.

For each sample the prompt is the conversation up to (excluding) the last assistant turn and the
reference is that turn's text (``sample["answer"]``). Records are written as JSONL in dataset
order::

    {"id", "qtype", "question", "reference", "prediction", "source", "lang", "meta"}

(+ ``"correct"`` with ``compare_gt``). Samples go to the engine in chunks (so it can sort them by
length into batches) and each chunk is flushed, so ``resume=True`` continues an interrupted run
by skipping the ids already in the output. A sample that cannot be prompted goes to
``<out stem>.rejects.jsonl`` with a reason; read = predicted + rejected (+ skipped on resume).
"""

from __future__ import annotations

import json
import os
import sys
from collections import Counter
from pathlib import Path

from ..data.io import count_samples, read_samples, rejects_path_for
from ..data.schema import SampleError, count_image_parts, message_text, validate_sample
from ..imagery.decode import ImageError
from ..imagery.video import VideoError
from ..inference.engine import ChatRequest, GenerationParams, PromptTooLong

# problems of one sample: rejected, the rest of its chunk goes on
SAMPLE_ERRORS = (ImageError, VideoError, PromptTooLong)


def split_prompt(sample: dict) -> tuple[ChatRequest, str]:
    """(prompt request, reference text) of a sample; raises :class:`SampleError` when unusable."""
    validate_sample(sample)
    msgs = sample["messages"]
    last = max((i for i, m in enumerate(msgs) if m["role"] == "assistant"), default=None)
    if last is None:
        prompt, reference = list(msgs), sample["answer"]
    else:
        prompt, reference = list(msgs[:last]), message_text(msgs[last])
    if not any(m["role"] == "user" for m in prompt):
        raise SampleError("empty_question", "no user turn before the last assistant turn")
    n = count_image_parts(prompt)
    nv = sum(1 for m in prompt for p in m["content"] if p.get("type") == "video")
    return ChatRequest(prompt, list(sample["images"][:n]), list((sample.get("videos") or [])[:nv])), reference


def question_of(request: ChatRequest) -> str:
    users = [m for m in request.messages if m["role"] == "user"]
    return message_text(users[-1]) if users else ""


def correctness_fn():
    """``record → bool``: :func:`geovl.evaluate.score.score_record` (the rules ``geovl score`` uses)
    when present, else a normalised exact match (case, surrounding whitespace, final punctuation)."""
    try:
        from .score import score_record
    except ImportError:
        score_record = None
    if score_record is not None:
        return lambda rec: bool(score_record(rec)["correct"])

    def exact(rec: dict) -> bool:
        norm = lambda s: (s or "").strip().strip("。.!！?？").strip().lower()  # noqa: E731
        return norm(rec["prediction"]) == norm(rec["reference"])

    return exact


def _existing_ids(out: Path) -> list[str]:
    """Ids already predicted in ``out``; a torn last line (crash mid-write) is dropped from the file."""
    if not out.exists():
        return []
    from ..fileio import iter_jsonl, write_jsonl

    good, ids = [], []
    for _, rec in iter_jsonl(out, errors="yield"):  # a bad line (the torn last one) is dropped
        try:
            ids.append(str(rec["id"]))
        except (KeyError, TypeError):
            continue
        good.append(rec)
    write_jsonl(out, good)
    return ids


YES_NO_PAIRS = [
    ("yes", "no"),
    ("Yes", "No"),
    ("YES", "NO"),
    ("是", "否"),
    ("有", "没有"),
    ("对", "错"),
    ("true", "false"),
]
FORCED_QTYPES = ("yes_no", "choice")
MAX_CHOICES = 50


def choice_candidates(data: str | os.PathLike, limit: int | None = None) -> dict[str, list[str]]:
    """For forced-choice scoring: the distinct reference answers of ``choice`` samples per language."""
    by_lang: dict[str, set] = {}
    for n, s in enumerate(read_samples(data, columns=["qtype", "answer", "meta"])):
        if limit is not None and n >= limit:
            break
        if s["qtype"] == "choice" and s["answer"].strip():
            lang = (s.get("meta") or {}).get("lang") or ""
            by_lang.setdefault(lang, set()).add(s["answer"].strip())
    return {k: sorted(v)[:MAX_CHOICES] for k, v in by_lang.items()}


def candidates_for(sample: dict, reference: str, choices: dict[str, list[str]]) -> list[str] | None:
    """The closed answer set a forced choice picks from, or None (then the model generates)."""
    ref = reference.strip()
    if sample["qtype"] == "yes_no":
        for pair in YES_NO_PAIRS:
            if ref in pair:
                return list(pair)
        return None
    if sample["qtype"] == "choice":
        cands = choices.get((sample.get("meta") or {}).get("lang") or "", [])
        return cands if len(cands) >= 2 and ref in cands else None
    return None


def _forced_or_generate(engine, pending: list, params: GenerationParams) -> list:
    """Predictions for a chunk: forced choice where ``pending`` carries candidates, else generation."""
    forced = [k for k, p in enumerate(pending) if p[3]]
    free = [k for k, p in enumerate(pending) if not p[3]]
    preds: list = [None] * len(pending)
    if free:
        for k, pred in zip(free, _generate_or_isolate(engine, [pending[k][1] for k in free], params)):
            preds[k] = pred
    if forced:
        try:
            lps = engine.choice_logprobs([pending[k][1] for k in forced], [pending[k][3] for k in forced])
        except SAMPLE_ERRORS:
            lps = []
            for k in forced:
                try:
                    lps.append(engine.choice_logprobs([pending[k][1]], [pending[k][3]])[0])
                except SAMPLE_ERRORS as e:
                    lps.append(e)
        for k, lp in zip(forced, lps):
            if isinstance(lp, SAMPLE_ERRORS):
                preds[k] = lp
            else:
                cands = pending[k][3]
                preds[k] = ForcedChoice(cands[max(range(len(cands)), key=lambda j: lp[j])], dict(zip(cands, lp)))
    return preds


class ForcedChoice(str):
    """A prediction chosen among candidates by log-probability (a ``str`` with the scores attached)."""

    def __new__(cls, text: str, scores: dict):
        obj = super().__new__(cls, text)
        obj.scores = scores
        return obj


def _generate_or_isolate(engine, requests: list[ChatRequest], params: GenerationParams) -> list:
    """``engine.generate``; if an image in the chunk cannot be decoded or a prompt is longer than the
    model's context, retry one by one so only those samples fail (their entries are the error)."""
    try:
        return engine.generate(requests, params)
    except SAMPLE_ERRORS:
        out = []
        for r in requests:
            try:
                out.append(engine.generate([r], params)[0])
            except SAMPLE_ERRORS as e:
                out.append(e)
        return out


def cube_inputs(sample: dict, root: Path) -> list[Path]:
    """The cube files standing in for a sample's images (a :class:`SampleError` ``no_cube`` if there are none)."""
    import sys

    from ..models.vision_input import implementation

    spectral = sys.modules[implementation("spectral").__module__]  # registered by name: spectral sits above evaluate
    SpectralError, sample_cube_paths = spectral.SpectralError, spectral.sample_cube_paths

    try:
        paths = sample_cube_paths(sample, root)
    except SpectralError as e:
        raise SampleError("no_cube", f"the model reads hyperspectral cubes: {e}") from None
    missing = [str(p) for p in paths if not p.exists()]
    if missing:
        raise SampleError("no_cube", f"cube file not found: {missing[0]} (set the cube folder with --spectral-root)")
    return paths


def record_for(sample: dict, request: ChatRequest, reference: str, prediction: str) -> dict:
    """The prediction record of one answered sample (:func:`geovl.evaluate.records.prediction_record`:
    checked against the schema ``geovl score`` reads)."""
    from .records import prediction_record

    meta = sample.get("meta") or {}
    return prediction_record(
        sample["id"],
        sample["qtype"],
        question_of(request),
        reference,
        prediction,
        source=sample["source"],
        lang=meta.get("lang", meta.get("language")),
        meta=meta,
    )


def box_frame_for(engine, sample: dict) -> dict | None:
    """For a grounding sample answered by a local model: how its boxes map back to stored-image pixels
    (``meta["box_frame"]``, read by ``geovl score``); None otherwise (a remote model's boxes are read
    as stored-image pixels)."""
    if (
        sample.get("qtype") != "grounding"
        or getattr(engine, "family", None) is None
        or getattr(engine, "processor", None) is None
    ):
        return None
    from ..data.box_render import sample_frame
    from ..data.schema import SampleError
    from ..models.preprocess import PreprocessConfig

    lo, hi = PreprocessConfig.bounds_of(engine.processor)
    try:
        return sample_frame(sample, engine.family, lo, hi).as_dict()
    except SampleError:
        return None


def run_chunked(
    data,
    out,
    prepare,
    answer,
    limit: int | None = None,
    resume: bool = False,
    progress: bool = True,
    chunk_size: int = 8,
    desc: str = "predict",
    unit: str = "sample",
) -> dict:
    """The loop of ``geovl eval`` (single answers and dialogues): read the samples of ``data`` (the first
    ``limit``), ``prepare(sample)`` each into an item (a :class:`SampleError` rejects the sample), and
    ``answer(items)`` them ``chunk_size`` at a time — one result per item: the record to write to ``out``,
    or an error with ``reason``/``detail`` (e.g. :class:`ImageError`) that rejects the sample.

    ``resume`` skips the ids already in ``out`` and appends; rejected samples go to the rejects file
    beside ``out`` (removed when a fresh run rejects none). Returns ``{read, predicted, skipped,
    rejected, out}``; ``read == predicted + skipped + rejected``."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    done = set(_existing_ids(out)) if resume else set()
    total = count_samples(data)
    if limit is not None:
        total = min(total, int(limit))
    counts = {"read": 0, "predicted": 0, "skipped": 0, "rejected": 0}
    rejects_path = rejects_path_for(out)
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=total, desc=desc, unit=unit, file=sys.stderr, dynamic_ncols=True)
    pending: list = []  # (sample, item)
    with (
        open(out, "a" if resume else "w", encoding="utf-8") as fout,
        open(rejects_path, "a" if resume else "w", encoding="utf-8") as frej,
    ):

        def reject(sample: dict, reason: str, detail: str) -> None:
            counts["rejected"] += 1
            frej.write(
                json.dumps(
                    {"source": sample.get("source", ""), "id": sample.get("id"), "reason": reason, "detail": detail},
                    ensure_ascii=False,
                )
                + "\n"
            )

        def flush() -> None:
            if not pending:
                return
            for (sample, _), result in zip(
                pending, answer([item for _, item in pending]), strict=True
            ):  # one result each
                if isinstance(result, dict):
                    fout.write(json.dumps(result, ensure_ascii=False) + "\n")
                    counts["predicted"] += 1
                else:
                    reject(sample, result.reason, result.detail)
            fout.flush()
            frej.flush()
            if bar is not None:
                bar.update(len(pending))
            pending.clear()

        for sample in read_samples(data):
            if limit is not None and counts["read"] >= limit:
                break
            counts["read"] += 1
            if sample.get("id") in done:
                counts["skipped"] += 1
            else:
                try:
                    pending.append((sample, prepare(sample)))
                except SampleError as e:
                    reject(sample, e.reason, e.detail)
                else:
                    if len(pending) >= chunk_size:
                        flush()
                    continue  # the bar moves when its chunk is answered
            if bar is not None:
                bar.update(1)
        flush()
    if bar is not None:
        bar.close()
    if counts["rejected"] == 0 and not resume:
        rejects_path.unlink(missing_ok=True)
    counts["out"] = str(out)
    return counts


def run_predictions(
    engine,
    data: str | os.PathLike,
    out: str | os.PathLike,
    params: GenerationParams | None = None,
    limit: int | None = None,
    resume: bool = False,
    compare_gt: bool = False,
    progress: bool = True,
    chunk_size: int | None = None,
    forced_choice: bool = False,
    spectral_root: str | os.PathLike | None = None,
) -> dict:
    """Predict every sample of ``data`` (the first ``limit``) into ``out``; returns the counts.

    ``forced_choice``: yes/no and choice questions are answered by picking the candidate answer
    with the highest log-probability (local engines only) instead of free generation.

    A model with a spectral projector (``engine.inputs.kind == "cube"``) is given each sample's hyperspectral cube
    (``meta.cube``, relative to ``spectral_root``, default the folder of ``data``) instead of its image;
    a sample without a readable cube goes to the rejects file."""
    from ..inference.capabilities import can_score_choices, input_spec

    if forced_choice and not can_score_choices(engine):
        from ..inference.engine import EngineError

        raise EngineError(
            "--forced-choice needs a local model (answer log-probabilities); the remote engine cannot provide them"
        )
    choices = choice_candidates(data, limit) if forced_choice else {}
    params = params or GenerationParams()
    chunk_size = chunk_size or 4 * int(getattr(engine, "batch_size", None) or getattr(engine, "concurrency", 8))
    check = correctness_fn() if compare_gt else None
    correct = 0
    by_qtype: Counter = Counter()
    cube_root = Path(spectral_root) if spectral_root else Path(data).parent
    spectral = input_spec(engine).reads_cubes

    def prepare(sample):
        req, ref = split_prompt(sample)
        if spectral:
            req.images = cube_inputs(sample, cube_root)
        return sample, req, ref, candidates_for(sample, ref, choices) if forced_choice else None

    def answer(pending):
        nonlocal correct
        results = []
        for (sample, req, ref, _), pred in zip(pending, _forced_or_generate(engine, pending, params)):
            if isinstance(pred, SAMPLE_ERRORS):
                results.append(pred)
                continue
            rec = record_for(sample, req, ref, str(pred))
            frame = box_frame_for(engine, sample)
            if frame is not None:
                rec["meta"] = dict(rec["meta"], box_frame=frame)
            if isinstance(pred, ForcedChoice):
                rec["forced_choice"] = {c: round(v, 4) for c, v in pred.scores.items()}
            if check is not None:
                rec["correct"] = check(rec)
                correct += int(rec["correct"])
            by_qtype[sample["qtype"]] += 1
            results.append(rec)
        return results

    counts = run_chunked(
        data,
        out,
        prepare,
        answer,
        limit=limit,
        resume=resume,
        progress=progress,
        chunk_size=chunk_size,
        desc=f"predict ({engine.name})",
        unit="sample",
    )
    counts["correct"] = correct if compare_gt else None
    counts["by_qtype"] = dict(sorted(by_qtype.items()))
    counts["engine"] = engine.stats.as_dict()
    return counts


def print_scores(predictions: str | os.PathLike) -> bool:
    """Print the score table of a predictions file with :mod:`geovl.evaluate.score` (the same
    rules as ``geovl score``); returns whether a table was printed."""
    try:
        from .score import format_metrics, score_file
    except ImportError:
        return False
    _, metrics = score_file(predictions)
    if not metrics.get("n"):
        return False
    print(format_metrics(metrics))
    return True
