"""``geovl judge``: a judge model scores every turn of multi-turn answers (MMDU-style).

Input (``--answers``): the JSONL written by ``geovl eval --dialogue`` (one record per dialogue
with ``turns: [{question, reference, prediction, n_images}]``); a plain ``geovl eval``
predictions file (``question``/``reference``/``prediction`` per record) is read as one-turn
dialogues.

For each turn the prompt is the template (an editable text file; defaults
``templates/judge_zh.txt`` and ``judge_en.txt``) with these placeholders replaced in one pass
(other braces are left alone)::

    {question} {reference} {answer} {turn} {n_images}

The judge is any engine (``--model`` folder + ``--adapter``, or ``--api URL``), called greedily
with a text-only request. Its raw output is kept and parsed by
:func:`geovl.evaluate.judge_parse.parse_judgment`; one record per turn is appended to
``DIR/judgments.jsonl``::

    {"key": "<id>#<turn>", "id", "turn", "status", "scores", "missing", "rejected",
     "conflicts", "from_dict", "raw", "judge", "template"}

``status`` is ``ok``/``partial``/``unparseable`` (judge answered) or ``error`` (the call failed;
``error`` holds the message). ``--resume`` keeps the finished records (not the errors) and judges
the rest; the template must be the same (checked through ``DIR/judge_config.json``).
``--judgments FILE`` re-parses the raw texts of an earlier judgments file into
``DIR/judgments.jsonl`` without calling any judge (after a parser fix or to re-read old runs).
Every run ends by writing ``DIR/stats.json`` and ``DIR/stats.md`` (:mod:`.judge_stats`).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import sys
from importlib import resources
from pathlib import Path

from ..data.schema import user_turn
from ..errors import GeoVLError
from ..fileio import iter_jsonl, write_jsonl
from ..inference.engine import ChatRequest, EngineError, GenerationParams
from .judge_parse import parse_judgment
from .records import PredictionsFileError, check_record

PLACEHOLDERS = ("question", "reference", "answer", "turn", "n_images")
_PLACEHOLDER_RE = re.compile(r"\{(" + "|".join(PLACEHOLDERS) + r")\}")
LANGS = ("zh", "en")


class JudgeError(GeoVLError, ValueError):
    """A user-facing problem with the judge inputs (answers file, template, output folder)."""


# -- template --------------------------------------------------------------------------------------
def default_template_path(lang: str = "zh"):
    if lang not in LANGS:
        raise JudgeError(f"--lang must be one of {LANGS}, got {lang!r}")
    return resources.files("geovl.evaluate") / "templates" / f"judge_{lang}.txt"


def load_template(path: str | os.PathLike | None = None, lang: str = "zh") -> tuple[str, str]:
    """(template text, its name). A custom template needs at least ``{question}`` and ``{answer}``."""
    if path is None:
        src = default_template_path(lang)
        return src.read_text(encoding="utf-8"), f"default-{lang}"
    p = Path(path)
    if not p.is_file():
        raise JudgeError(f"{p}: template file does not exist")
    try:
        text = p.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        raise JudgeError(f"{p}: template is not UTF-8 text ({e})") from None
    found = set(_PLACEHOLDER_RE.findall(text))
    missing = [f"{{{k}}}" for k in ("question", "answer") if k not in found]
    if missing:
        raise JudgeError(
            f"{p}: template lacks the placeholder(s) {', '.join(missing)} (available: {', '.join('{' + k + '}' for k in PLACEHOLDERS)})"
        )
    return text, p.name


def template_digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def render_prompt(
    template: str, question: str, reference: str | None, answer: str, turn: int = 1, n_images: int = 0
) -> str:
    values = {
        "question": question or "",
        "reference": reference if reference is not None else "(no reference answer / 无参考答案)",
        "answer": answer or "",
        "turn": str(turn),
        "n_images": str(n_images),
    }
    return _PLACEHOLDER_RE.sub(lambda m: values[m.group(1)], template)


# -- answers -----------------------------------------------------------------------------------------
def read_answers(path) -> list[dict]:
    """Dialogues ``{id, turns: [{question, reference, prediction, n_images}]}`` of an answers file."""
    path = Path(path)
    if not path.is_file():
        raise JudgeError(f"{path}: no such answers file")
    out, seen = [], {}
    for lineno, rec in iter_jsonl(path, error_class=JudgeError):
        where = f"{path}:{lineno}"
        if not isinstance(rec, dict) or rec.get("id") in (None, ""):
            raise JudgeError(f"{where}: expected an object with an 'id'")
        rid = str(rec["id"])
        if rid in seen:
            raise JudgeError(f"{where}: duplicate id {rid!r} (first at line {seen[rid]})")
        seen[rid] = lineno
        if "turns" in rec:
            turns = rec["turns"]
            if not isinstance(turns, list) or not all(
                isinstance(t, dict) and "question" in t and "prediction" in t for t in turns
            ):
                raise JudgeError(f"{where}: 'turns' must be a list of objects with 'question' and 'prediction'")
        elif "prediction" in rec and "question" in rec:
            try:  # a geovl eval prediction record: the one schema (geovl.evaluate.records)
                check_record(rec, where)
            except PredictionsFileError as e:
                raise JudgeError(str(e)) from None
            n = (rec.get("meta") or {}).get("n_images", 0)
            turns = [
                {
                    "question": rec["question"],
                    "reference": rec.get("reference"),
                    "prediction": rec["prediction"],
                    "n_images": n,
                }
            ]
        else:
            raise JudgeError(
                f"{where}: neither 'turns' (geovl eval --dialogue) nor 'question'+'prediction' (geovl eval)"
            )
        out.append({"id": rid, "turns": turns})
    if not out:
        raise JudgeError(f"{path}: no answers in the file")
    return out


def turn_items(dialogues: list[dict]) -> list[dict]:
    """One item per turn: ``{key, id, turn (1-based), question, reference, answer, n_images}``."""
    items = []
    for d in dialogues:
        n_images = 0
        for k, t in enumerate(d["turns"], 1):
            n_images += int(t.get("n_images") or 0)
            items.append({
                "key": f"{d['id']}#{k}", "id": d["id"], "turn": k, "question": str(t.get("question") or ""),
                "reference": t.get("reference"), "answer": "" if t.get("prediction") is None else str(t["prediction"]),
                "n_images": n_images,
            })  # fmt: skip
    return items


# -- judgments file ----------------------------------------------------------------------------------
def judgment_record(item: dict, raw: str | None, judge: str, template: str, error: str | None = None) -> dict:
    rec = {"key": item["key"], "id": item["id"], "turn": item["turn"]}
    if error is not None:
        rec.update(status="error", scores={}, error=error, raw=None)
    else:
        rec.update(parse_judgment(raw))
        rec["raw"] = raw
    rec.update(judge=judge, template=template)
    return rec


def _keep_finished(path: Path) -> set[str]:
    """Keys of finished (non-error) judgments; error records and a torn last line are dropped."""
    if not path.exists():
        return set()
    keep, keys = [], set()
    for _, rec in iter_jsonl(path, errors="yield"):  # bad lines (a torn last one) are dropped
        try:
            key = str(rec["key"])
        except (KeyError, TypeError):
            continue
        if rec.get("status") == "error":
            continue
        keys.add(key)
        keep.append(rec)
    write_jsonl(path, keep)
    return keys


def _check_config(out_dir: Path, config: dict, resume: bool) -> None:
    cfg_path = out_dir / "judge_config.json"
    if resume and cfg_path.exists():
        try:
            old = json.loads(cfg_path.read_text(encoding="utf-8"))
        except json.JSONDecodeError:
            old = {}
        if old.get("template_sha256") and old["template_sha256"] != config["template_sha256"]:
            raise JudgeError(
                f"{out_dir}: its judgments used another template ({old.get('template')}); "
                "use a new --out folder or the same --template / 评审模板与已有结果不一致"
            )
    cfg_path.write_text(json.dumps(config, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")


def _call(engine, requests: list[ChatRequest], params: GenerationParams) -> list:
    """Judge outputs; when the batch fails, one by one so that only the failing calls are errors."""
    try:
        return engine.generate(requests, params)
    except EngineError:
        if len(requests) == 1:
            raise
    out = []
    for r in requests:
        try:
            out.append(engine.generate([r], params)[0])
        except EngineError as e:
            out.append(e)
    if all(isinstance(o, EngineError) for o in out):
        raise out[0]  # nothing worked: the judge is unreachable or misconfigured
    return out


def judge_answers(
    engine,
    answers,
    out_dir,
    template: str,
    template_name: str,
    params: GenerationParams | None = None,
    resume: bool = False,
    limit: int | None = None,
    progress: bool = True,
    source: str | None = None,
) -> dict:
    """Judge every turn of ``answers`` (a file, or dialogues from :func:`read_answers`; the first
    ``limit`` dialogues) into ``out_dir/judgments.jsonl``. ``source`` names the answers in
    ``judge_config.json`` when ``answers`` is a list."""
    params = params or GenerationParams(max_new_tokens=1024)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    dialogues = read_answers(answers) if isinstance(answers, (str, os.PathLike)) else list(answers)
    if limit is not None:
        dialogues = dialogues[: int(limit)]
    config = {"answers": str(answers) if isinstance(answers, (str, os.PathLike)) else source, "judge": engine.name, "template": template_name, "template_sha256": template_digest(template),
              "max_new_tokens": params.max_new_tokens}  # fmt: skip
    _check_config(out_dir, config, resume)
    path = out_dir / "judgments.jsonl"
    done = _keep_finished(path) if resume else set()
    items = [it for it in turn_items(dialogues) if it["key"] not in done]
    counts = {
        "dialogues": len(dialogues),
        "turns": len(items) + len(done),
        "skipped": len(done),
        "judged": 0,
        "errors": 0,
    }
    chunk = int(getattr(engine, "batch_size", None) or getattr(engine, "concurrency", 8))
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(items), desc=f"judge ({engine.name})", unit="turn", file=sys.stderr, dynamic_ncols=True)
    with open(path, "a" if resume else "w", encoding="utf-8") as f:
        for s in range(0, len(items), chunk):
            batch = items[s : s + chunk]
            reqs = [
                ChatRequest(
                    [
                        user_turn(
                            render_prompt(
                                template, it["question"], it["reference"], it["answer"], it["turn"], it["n_images"]
                            )
                        )
                    ]
                )
                for it in batch
            ]
            outs = _call(engine, reqs, params)
            for it, o in zip(batch, outs):
                if isinstance(o, EngineError):
                    rec = judgment_record(it, None, engine.name, template_name, error=str(o))
                    counts["errors"] += 1
                else:
                    rec = judgment_record(it, o, engine.name, template_name)
                    counts["judged"] += 1
                f.write(json.dumps(rec, ensure_ascii=False) + "\n")
            f.flush()
            if bar is not None:
                bar.update(len(batch))
    if bar is not None:
        bar.close()
    counts["out"] = str(path)
    return counts


def rescore(judgments_file, out_dir) -> dict:
    """Re-parse the raw judge texts of ``judgments_file`` into ``out_dir/judgments.jsonl``."""
    src = Path(judgments_file)
    if src.is_dir():
        src = src / "judgments.jsonl"
    if not src.is_file():
        raise JudgeError(f"{src}: no such judgments file")
    recs = []
    for lineno, rec in iter_jsonl(src, error_class=JudgeError):
        if not isinstance(rec, dict) or "id" not in rec or "turn" not in rec or "raw" not in rec:
            raise JudgeError(f"{src}:{lineno}: a judgment needs 'id', 'turn' and 'raw'")
        if rec.get("status") != "error":
            item = {"key": rec.get("key") or f"{rec['id']}#{rec['turn']}", "id": rec["id"], "turn": rec["turn"]}
            rec = {**rec, **judgment_record(item, rec["raw"], rec.get("judge", ""), rec.get("template", ""))}
        recs.append(rec)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    dst = out_dir / "judgments.jsonl"
    write_jsonl(dst, recs)
    return {"turns": len(recs), "out": str(dst), "errors": sum(1 for r in recs if r.get("status") == "error")}
