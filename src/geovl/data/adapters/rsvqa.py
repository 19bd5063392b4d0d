"""RSVQA (Lobry et al., TGRS 2020) official split files -> samples.

Input: a folder with ``{P}_images.json``, ``{P}_questions.json``, ``{P}_answers.json``
(e.g. ``P = LR_split_test`` or ``USGS_split_test_phili``) and the images ``{img_id}.tif``
under ``Images_LR/`` (LR) or ``Data/`` (HR) inside ``--images-root`` (default: the folder).

Layout (research/anchors.md tables 1-3): top-level keys ``images`` / ``questions`` /
``answers``; ids are LIST POSITIONS (checked: a file whose ids are not positions is a fatal
error, since every cross-reference is positional); ``answers[question["answers_ids"][0]]``;
``active`` flags on all three. One input record = one question (inactive ones are rejected
with reason ``inactive``; split files list other splits' records as inactive).

Question types: presence/comp -> ``yes_no``, rural_urban -> ``choice``, count -> ``count``,
area (``"10632m2"``) -> ``area``; others -> ``open``. ``--bin-counts`` maps counts and areas
to the community bins (``0``, ``between 1 and 10``, ..., ``more than 1000``) with qtype
``choice``, keeping the raw answer in ``meta["raw_answer"]``.

If the question/answer records of a split file carry only ``id``/``active`` flags and
``all_questions.json`` / ``all_answers.json`` sit in the same folder, the text is taken
from those (same positional ids).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Iterator

from ...imagery.decode import ImageError
from ..convert import ConvertError, ConvertOptions, ImageCache
from ..schema import SampleError, make_sample

QTYPES = {"presence": "yes_no", "comp": "yes_no", "rural_urban": "choice", "count": "count", "area": "area"}
BINS = ("0", "between 1 and 10", "between 11 and 100", "between 101 and 1000", "more than 1000")
IMAGE_DIRS = ("Images_LR", "Data", ".")
_AREA = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*m2\s*$")
_IMAGE_KEYS = ("sensor", "res_x", "res_y", "original_name", "upperleft_map_x", "upperleft_map_y")


def bin_value(v: float) -> str:
    """Community quantisation of counts (LR) and areas in m² (HR)."""
    if v <= 0:
        return BINS[0]
    if v <= 10:
        return BINS[1]
    if v <= 100:
        return BINS[2]
    if v <= 1000:
        return BINS[3]
    return BINS[4]


def find_prefixes(folder: Path) -> list[str]:
    """Prefixes P for which all three ``{P}_{images,questions,answers}.json`` exist."""
    out = []
    for q in sorted(folder.glob("*_questions.json")):
        p = q.name[: -len("_questions.json")]
        if (folder / f"{p}_images.json").exists() and (folder / f"{p}_answers.json").exists():
            out.append(p)
    return out


def load_records(path: Path, key: str) -> list:
    """The ``key`` list of an RSVQA JSON file, with ``id == position`` checked."""
    if not path.is_file():
        raise ConvertError(f"{path}: missing RSVQA split file")
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except json.JSONDecodeError as e:
        raise ConvertError(f"{path}: not valid JSON ({e.msg} at line {e.lineno}, column {e.colno})") from None
    except UnicodeDecodeError as e:
        raise ConvertError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    if not isinstance(data, dict) or not isinstance(data.get(key), list):
        found = sorted(data)[:5] if isinstance(data, dict) else type(data).__name__
        raise ConvertError(
            f"{path}: expected a top-level object with a {key!r} list (official RSVQA layout), found {found}"
        )
    recs = data[key]
    for i, r in enumerate(recs):
        rid = r.get("id") if isinstance(r, dict) else None
        if type(rid) is not int or rid != i:
            raise ConvertError(
                f"{path}: record at position {i} has id {rid!r}; RSVQA ids must equal list positions "
                "(questions, answers and images refer to each other by position)"
            )
    return recs


def _image_path(roots: list[Path], img_id: int) -> Path | None:
    for r in roots:
        p = r / f"{img_id}.tif"
        if p.is_file():
            return p
    return None


def _answer(text: str, rtype: str, bin_counts: bool) -> tuple[str, str, dict]:
    """(answer, qtype, meta) for one raw RSVQA answer."""
    qtype = QTYPES.get(rtype, "open")
    meta: dict = {}
    if rtype == "count":
        try:
            value = int(text)
        except ValueError:
            raise SampleError("bad_field_value", f"count answer {text!r} is not an integer") from None
        meta["value"] = value
    elif rtype == "area":
        m = _AREA.match(text)
        if not m:
            raise SampleError("bad_field_value", f"area answer {text!r} is not like '10632m2'")
        value = float(m.group(1))
        meta["value"] = int(value) if value.is_integer() else value
        meta["unit"] = "m2"
    if bin_counts and rtype in ("count", "area"):
        meta["raw_answer"] = text
        meta["binned"] = True
        return bin_value(meta["value"]), "choice", meta
    return text, qtype, meta


class _Texts:
    """Fallback text source (``all_questions.json`` / ``all_answers.json``), loaded on demand."""

    def __init__(self, folder: Path):
        self.folder = folder
        self._lists: dict[str, list | None] = {}

    def get(self, name: str, key: str, pos: int) -> dict | None:
        if name not in self._lists:
            p = self.folder / name
            self._lists[name] = load_records(p, key) if p.is_file() else None
        lst = self._lists[name]
        return lst[pos] if lst is not None and pos < len(lst) else None


def iter_records(o: ConvertOptions) -> Iterator[tuple[str, object]]:
    folder = o.input
    if not folder.is_dir():
        raise ConvertError(f"{folder}: --from rsvqa expects the folder holding the split JSON files")
    prefix = o.split_prefix
    if not prefix:
        found = find_prefixes(folder)
        if len(found) != 1:
            raise ConvertError(
                f"{folder}: found {len(found)} RSVQA split prefixes {found}; choose one with --split-prefix "
                "(e.g. LR_split_test or USGS_split_test_phili)"
            )
        prefix = found[0]
    qfile = folder / f"{prefix}_questions.json"
    images = load_records(folder / f"{prefix}_images.json", "images")
    questions = load_records(qfile, "questions")
    answers = load_records(folder / f"{prefix}_answers.json", "answers")
    root = o.images_root or folder
    roots = [root / d for d in IMAGE_DIRS if (root / d).is_dir()]
    cache = ImageCache(o.pixel_limit, size=4, opts=o)
    texts = _Texts(folder)
    for pos, q in enumerate(questions):
        source = f"{qfile.name}#{pos}"
        try:
            item = _build(q, pos, prefix, images, answers, roots, cache, texts, o.bin_counts)
        except (SampleError, ImageError) as e:
            item = e
        yield source, item


def _build(q, qid, prefix, images, answers, roots, cache, texts, bin_counts) -> dict:
    if not q.get("active", True):
        raise SampleError("inactive", f"question {qid} is inactive in this split")
    if "question" not in q:
        full = texts.get("all_questions.json", "questions", qid)
        if full is None:
            raise SampleError(
                "bad_record", f"question {qid} has no 'question' text (put all_questions.json next to the split files)"
            )
        q = {**full, **q}
    text = q.get("question")
    rtype = q.get("type")
    if not isinstance(text, str) or not isinstance(rtype, str):
        raise SampleError("bad_record", f"question {qid}: 'question' and 'type' must be strings")
    if not text.strip():
        raise SampleError("empty_question", f"question {qid} has an empty text")
    img_id = q.get("img_id")
    if type(img_id) is not int or not 0 <= img_id < len(images):
        raise SampleError("missing_image", f"question {qid}: img_id {img_id!r} not in the images file")
    img = images[img_id]
    if not img.get("active", True):
        raise SampleError("inactive", f"image {img_id} (question {qid}) is inactive in this split")
    aids = q.get("answers_ids")
    if not isinstance(aids, list) or not aids or type(aids[0]) is not int or not 0 <= aids[0] < len(answers):
        raise SampleError("missing_answer", f"question {qid}: answers_ids {aids!r} do not point into the answers file")
    aid = aids[0]
    a = answers[aid]
    if not a.get("active", True):
        raise SampleError("inactive", f"answer {aid} (question {qid}) is inactive in this split")
    if "answer" not in a:
        full = texts.get("all_answers.json", "answers", aid)
        if full is None:
            raise SampleError(
                "bad_record", f"answer {aid} has no 'answer' text (put all_answers.json next to the split files)"
            )
        a = {**full, **a}
    if a.get("question_id", qid) != qid:
        raise SampleError("answer_mismatch", f"answer {aid} belongs to question {a.get('question_id')}, not {qid}")
    raw = a.get("answer")
    if not isinstance(raw, (str, int)) or not str(raw).strip():
        raise SampleError("empty_answer", f"answer {aid} (question {qid}) is empty")
    answer, qtype, ameta = _answer(str(raw).strip(), rtype, bin_counts)
    path = _image_path(roots, img_id)
    if path is None:
        where = ", ".join(str(r) for r in roots) or "(no image folder found)"
        raise ImageError("missing_image", f"{img_id}.tif not found under {where}")
    loaded = cache.load(path)
    meta = {
        "dataset": "RSVQA",
        "split_prefix": prefix,
        "rsvqa_type": rtype,
        "question_id": qid,
        "answer_id": aid,
        "img_id": img_id,
        "image_file": f"{path.parent.name}/{path.name}",
        "lang": "en",
        **{k: img[k] for k in _IMAGE_KEYS if k in img},
        **ameta,
        **loaded.meta,
    }
    return make_sample(
        id=f"{prefix}-q{qid}",
        question=text.strip(),
        answer=answer,
        images=[loaded.data],
        qtype=qtype,
        source=f"{prefix}_questions.json#{qid}",
        meta=meta,
    )
