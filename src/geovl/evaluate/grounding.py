"""Scoring boxes: IoU, Hungarian matching at IoU 0.5, per-sample scores and dataset metrics.

Used by ``geovl score`` (qtype ``grounding``) and by the GRPO rewards (:mod:`geovl.rewards.rules`),
so a reward and a score read the same boxes the same way.

Boxes are compared in stored-image pixels (:mod:`geovl.data.boxes`). The reference is
``meta["boxes"]`` when present, else the reference text read as stored pixels; the prediction is
read with ``meta["box_frame"]`` (the family and resize of the model that wrote it, added by
``geovl eval`` for local models) or, without one, as stored pixels. Labels are not compared: the
question names what to locate.

Per sample (:func:`score_boxes`), by ``meta["grounding"]``:

- ``referring`` (one referred object): ``iou`` — the IoU of the predicted box with the reference;
  when the model gives several boxes, the best one's IoU divided by their number (so listing many
  guesses never helps). ``correct`` = ``iou ≥ 0.5`` (Acc@0.5).
- ``all`` (every object of a kind, the default): predicted and reference boxes are matched one to
  one by the Hungarian algorithm (``scipy.optimize.linear_sum_assignment``), maximising first the
  number of pairs with IoU ≥ 0.5, then their summed IoU; ``tp``/``fp``/``fn``, precision, recall,
  ``f1`` (both empty → 1.0); ``soft_f1`` = 2·Σ matched IoU / (predicted + reference) (the GRPO
  reward: 1.0 only for exact boxes, less for shifted ones); ``correct`` when every box is matched
  and nothing extra (f1 = 1).
- always: ``n_pred``, ``n_ref``, ``count_correct`` (as many boxes as reference objects),
  ``parsed`` (False: no box could be read from the prediction; it scores 0 and counts as unparsed).
- all: ``object_iou`` — mean over the reference objects of the IoU of the box matched to each one to
  one (Hungarian on IoU, no threshold; 0 for an object without a box).

Dataset metrics (:func:`summarize_grounding`): referring — Acc@0.5 and mean IoU; all — micro
precision/recall/F1 at 0.5 (precision is 0 when no box was predicted but objects were there, 1 when
there was nothing to find), mean IoU per object (``mean_object_iou``: every reference object of
the "all" samples, 0 when missed) and AP50 (VOC all-point interpolated average precision over every
predicted box of every sample, ranked by the box's ``score`` when the model wrote one, else in
output order with confidence 1); count accuracy from boxes.
"""

from __future__ import annotations

import numpy as np

THRESHOLD = 0.5


def iou(a, b) -> float:
    """Intersection over union of two [x1, y1, x2, y2] boxes (0.0 for empty or inverted ones)."""
    ix = min(a[2], b[2]) - max(a[0], b[0])
    iy = min(a[3], b[3]) - max(a[1], b[1])
    if ix <= 0 or iy <= 0:
        return 0.0
    inter = ix * iy
    area_a = max(0.0, a[2] - a[0]) * max(0.0, a[3] - a[1])
    area_b = max(0.0, b[2] - b[0]) * max(0.0, b[3] - b[1])
    union = area_a + area_b - inter
    return float(inter / union) if union > 0 else 0.0


def iou_matrix(pred: list, ref: list) -> np.ndarray:
    return np.array([[iou(p, r) for r in ref] for p in pred], dtype=float).reshape(len(pred), len(ref))


def match(pred: list, ref: list, threshold: float = THRESHOLD) -> list[tuple[int, int, float]]:
    """One-to-one pairs ``(pred index, ref index, IoU)`` with IoU ≥ ``threshold``: the most pairs, then
    the largest summed IoU (Hungarian algorithm)."""
    if not pred or not ref:
        return []
    from scipy.optimize import linear_sum_assignment

    m = iou_matrix(pred, ref)
    ok = m >= threshold
    weight = np.where(ok, 1000.0 + m, 0.0)
    rows, cols = linear_sum_assignment(weight, maximize=True)
    return sorted((int(r), int(c), float(m[r, c])) for r, c in zip(rows, cols) if ok[r, c])


def object_iou(pred: list, ref: list) -> float | None:
    """Mean over reference objects of the IoU with the predicted box matched to it one to one
    (Hungarian matching on IoU, no threshold; 0 for an object left without a box). None without objects."""
    if not ref:
        return None
    if not pred:
        return 0.0
    from scipy.optimize import linear_sum_assignment

    m = iou_matrix(pred, ref)
    rows, cols = linear_sum_assignment(m, maximize=True)
    return float(m[rows, cols].sum() / len(ref))


def _bboxes(boxes) -> list[list[float]]:
    return [list(map(float, b["bbox"])) for b in boxes]


def score_boxes(pred: list[dict] | None, ref: list[dict], mode: str = "all", threshold: float = THRESHOLD) -> dict:
    """Scores of one sample (see the module docstring); ``pred`` None = unparseable."""
    n_ref = len(ref)
    out: dict = {"qtype": "grounding", "mode": mode, "parsed": pred is not None, "n_ref": n_ref}
    if pred is None:
        pred = []
    n_pred = len(pred)
    out["n_pred"] = n_pred
    out["count_correct"] = out["parsed"] and n_pred == n_ref
    P, R = _bboxes(pred), _bboxes(ref)
    if mode == "referring":
        best = max((iou(p, R[0]) for p in P), default=0.0) if R else 0.0
        v = best / n_pred if n_pred else 0.0
        out["iou"] = v
        out["correct"] = out["parsed"] and v >= threshold
        return out
    pairs = match(P, R, threshold)
    tp = len(pairs)
    fp, fn = n_pred - tp, n_ref - tp
    if not out["parsed"]:
        prec = rec = f1 = soft = 0.0
    elif n_pred == 0 and n_ref == 0:
        prec = rec = f1 = soft = 1.0
    else:
        prec = tp / n_pred if n_pred else 0.0
        rec = tp / n_ref if n_ref else 0.0
        f1 = 2 * tp / (n_pred + n_ref)
        soft = 2 * sum(v for _, _, v in pairs) / (n_pred + n_ref)
    matched = {i for i, _, _ in pairs}
    scores = [p.get("score") for p in pred]
    out.update({
        "tp": tp, "fp": fp, "fn": fn, "precision": prec, "recall": rec, "f1": f1, "soft_f1": min(1.0, soft),
        "mean_matched_iou": (sum(v for *_, v in pairs) / tp) if tp else None,
        "object_iou": object_iou(P, R) if out["parsed"] else (0.0 if R else None),
        "correct": out["parsed"] and fp == 0 and fn == 0,
        # for AP50: (confidence, is true positive, output rank) per predicted box
        "ranked": [[1.0 if s is None else float(s), i in matched, i] for i, s in enumerate(scores)],
    })  # fmt: skip
    return out


def reference_boxes(meta: dict, reference_text: str) -> list[dict] | None:
    """The reference boxes of a record: ``meta["boxes"]``, else the reference text read as stored pixels."""
    boxes = (meta or {}).get("boxes")
    if isinstance(boxes, list):
        return boxes
    from ..models.box_format import parse_text

    return parse_text(None, reference_text)


def predicted_boxes(meta: dict, prediction: str) -> list[dict] | None:
    """The predicted boxes of a record in stored pixels (through ``meta["box_frame"]`` if there is one)."""
    from ..models.box_format import BoxFrame, parse_text

    frame = BoxFrame.from_dict((meta or {}).get("box_frame")) if (meta or {}).get("box_frame") else None
    return parse_text(frame, prediction)


def score_text(prediction: str, reference: str, meta: dict | None = None) -> dict:
    """Score one grounding record (prediction and reference text plus its meta)."""
    meta = meta if isinstance(meta, dict) else {}
    ref = reference_boxes(meta, reference)
    mode = meta.get("grounding", "all")
    mode = mode if mode in ("referring", "all") else "all"
    if ref is None:
        out = score_boxes(predicted_boxes(meta, prediction), [], mode)
        out.update(correct=False, note="reference_unparseable")
        return out
    if mode == "referring" and len(ref) != 1:
        mode = "all"
    return score_boxes(predicted_boxes(meta, prediction), ref, mode)


def ap50(results: list[dict]) -> float | None:
    """VOC all-point interpolated AP over the "all" samples' predicted boxes (see the module docstring)."""
    rows = [r for r in results if r.get("mode") == "all" and "ranked" in r]
    n_ref = sum(r["n_ref"] for r in rows)
    if not rows or n_ref == 0:
        return None
    dets = [(-conf, k, rank, tp) for k, r in enumerate(rows) for conf, tp, rank in r["ranked"]]
    dets.sort()
    tp_cum = fp_cum = 0
    prec, rec = [], []
    for *_, tp in dets:
        tp_cum += bool(tp)
        fp_cum += not tp
        prec.append(tp_cum / (tp_cum + fp_cum))
        rec.append(tp_cum / n_ref)
    if not dets:
        return 0.0
    mrec = [0.0] + rec + [1.0]
    mpre = [0.0] + prec + [0.0]
    for i in range(len(mpre) - 2, -1, -1):
        mpre[i] = max(mpre[i], mpre[i + 1])
    return float(sum((mrec[i + 1] - mrec[i]) * mpre[i + 1] for i in range(len(mrec) - 1)))


def summarize_grounding(results: list[dict]) -> dict:
    """Dataset metrics of grounding results (see the module docstring)."""
    out: dict = {}
    refer = [r for r in results if r.get("mode") == "referring"]
    many = [r for r in results if r.get("mode") == "all"]
    if refer:
        out["n_referring"] = len(refer)
        out["acc_at_0_5"] = sum(1 for r in refer if r["correct"]) / len(refer)
        out["mean_iou"] = sum(r["iou"] for r in refer) / len(refer)
    if many:
        tp = sum(r["tp"] for r in many)
        fp = sum(r["fp"] for r in many)
        fn = sum(r["fn"] for r in many)
        out["n_all"] = len(many)
        out["precision_at_0_5"] = tp / (tp + fp) if tp + fp else (1.0 if fn == 0 else 0.0)
        out["recall_at_0_5"] = tp / (tp + fn) if tp + fn else 1.0
        p, r = out["precision_at_0_5"], out["recall_at_0_5"]
        out["f1_at_0_5"] = 2 * p * r / (p + r) if p + r else 0.0
        out["mean_f1_at_0_5"] = sum(x["f1"] for x in many) / len(many)
        out["ap50"] = ap50(many)
        objs = [(x["object_iou"], x["n_ref"]) for x in many if x.get("object_iou") is not None]
        n_obj = sum(n for _, n in objs)
        out["mean_object_iou"] = sum(v * n for v, n in objs) / n_obj if n_obj else None
    if results:
        out["count_accuracy"] = sum(1 for r in results if r.get("count_correct")) / len(results)
    return out
