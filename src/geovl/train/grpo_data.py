"""GRPO prompts: dataset files → a ``datasets.Dataset`` in the form ``trl.GRPOTrainer`` reads.

Each sample becomes a prompt — its conversation up to (excluding) the last assistant turn, split
exactly as ``geovl eval`` does (:func:`geovl.evaluate.generate.split_prompt`) — plus the columns the
reward functions read: ``answer`` (that turn's text), ``qtype``, ``question`` (the last user turn),
``meta`` and ``id``; and ``images`` (PIL images, decoded on access).

A pre-pass measures each prompt's exact length (chat template with the generation prompt +
registry image-token maths from image headers, under the run's pixel bounds). Prompts over
``max_prompt_length`` (or samples over ``max_visual_tokens``) are dropped whole and recorded —
never truncated (cutting image tokens breaks the model). Counts conserve: ``read = kept + dropped``.

The ``datasets.Dataset`` holds only row numbers; samples are read from the files (Parquet one row
group at a time, see :class:`geovl.train.data.ParquetRows`) and images decoded when TRL asks for a
row, so memory stays bounded for large files.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from ..data.io import DatasetFileError, read_samples
from .data import ParquetRows


@dataclass
class Dropped:
    id: str
    reason: str
    detail: str
    file: str = ""


def _open(path: Path):
    if not path.exists():
        raise DatasetFileError(f"{path}: no such dataset file")
    if path.suffix == ".parquet":
        return ParquetRows(path)
    return list(read_samples(path))


def _prompt_row(sample: dict) -> dict:
    """The GRPO row of a (valid) sample, images still encoded."""
    from ..evaluate.generate import question_of, split_prompt

    request, reference = split_prompt(sample)
    prompt = [{"role": m["role"], "content": [dict(p) for p in m["content"]]} for m in request.messages]
    return {
        "id": sample["id"],
        "prompt": prompt,
        "images": list(request.images),
        "answer": reference,
        "qtype": sample["qtype"],
        "question": question_of(request),
        "meta": dict(sample.get("meta") or {}),
    }


class GRPOPrompts:
    """The usable prompts of one or more dataset files, with their exact prompt lengths."""

    def __init__(
        self,
        paths: Sequence[str | Path],
        processor,
        family,
        max_prompt_length: int | None = None,
        max_visual_tokens: int | None = None,
        min_pixels: int | None = None,
        max_pixels: int | None = None,
        progress: bool = True,
    ):
        self.processor = processor
        self.family = family
        self.max_prompt_length = max_prompt_length
        self.max_visual_tokens = max_visual_tokens
        self.min_pixels, self.max_pixels = min_pixels, max_pixels
        self.paths = [Path(p) for p in paths]
        self.tables = [_open(p) for p in self.paths]
        self.index: list[tuple[int, int]] = []
        self.lengths: list[int] = []
        self.ids: list[str] = []
        self.qtypes: list[str] = []
        self.dropped: list[Dropped] = []
        self.n_read = 0
        it = ((ti, ri) for ti, t in enumerate(self.tables) for ri in range(len(t)))
        if progress:
            from tqdm import tqdm

            total = sum(len(t) for t in self.tables)
            it = tqdm(it, total=total, desc="measure prompts / 统计提示", unit="sample", leave=False)
        for ti, ri in it:
            s = self.tables[ti][ri]
            self.n_read += 1
            try:
                length = self._measure(s)
            except _Drop as d:
                self.dropped.append(Dropped(str(s.get("id", f"row{ri}")), d.reason, d.detail, str(self.paths[ti])))
                continue
            self.index.append((ti, ri))
            self.lengths.append(length)
            self.ids.append(s["id"])
            self.qtypes.append(s["qtype"])

    def _measure(self, s: dict) -> int:
        from ..data.inspect import image_size
        from ..data.schema import SampleError

        try:
            row = _prompt_row(s)
        except SampleError as e:
            raise _Drop(e.reason, e.detail) from None
        if not row["answer"].strip():
            raise _Drop("empty_answer", "no reference answer to reward against")
        vis = 0
        for k, b in enumerate(row["images"]):
            try:
                w, h = image_size(b)
                vis += self.family.image_tokens(h, w, self.min_pixels, self.max_pixels)
            except Exception as e:  # noqa: BLE001 - any undecodable header / absurd size
                raise _Drop("bad_image", f"image {k}: {e}") from None
        text = self.processor.apply_chat_template(row["prompt"], tokenize=False, add_generation_prompt=True)
        n_text = len(self.processor.tokenizer(text, add_special_tokens=False)["input_ids"])
        length = n_text + vis - len(row["images"])  # each <|image_pad|> placeholder becomes its visual tokens
        if self.max_visual_tokens is not None and vis > self.max_visual_tokens:
            raise _Drop("over_visual_token_budget", f"{vis} visual tokens > max_visual_tokens={self.max_visual_tokens}")
        if self.max_prompt_length is not None and length > self.max_prompt_length:
            raise _Drop("over_max_prompt_length", f"prompt of {length} tokens > max_prompt_length={self.max_prompt_length}")
        return length

    def __len__(self) -> int:
        return len(self.index)

    def sample(self, i: int) -> dict:
        ti, ri = self.index[i]
        return self.tables[ti][ri]

    def row(self, i: int) -> dict:
        """The decoded GRPO row ``i`` (PIL images)."""
        from PIL import Image

        row = _prompt_row(self.sample(i))
        row["images"] = [Image.open(io.BytesIO(b)).convert("RGB") for b in row["images"]]
        return row

    def to_dataset(self):
        """A ``datasets.Dataset`` whose rows are :meth:`row` (decoded when accessed)."""
        from datasets import Dataset

        ds = Dataset.from_dict({"row": list(range(len(self)))})
        return ds.with_transform(_RowTransform(self))

    def summary(self) -> dict:
        reasons: dict[str, int] = {}
        for d in self.dropped:
            reasons[d.reason] = reasons.get(d.reason, 0) + 1
        by_qtype: dict[str, int] = {}
        for q in self.qtypes:
            by_qtype[q] = by_qtype.get(q, 0) + 1
        return {
            "read": self.n_read,
            "kept": len(self),
            "dropped": len(self.dropped),
            "dropped_by_reason": reasons,
            "kept_by_qtype": by_qtype,
        }

    def write_dropped(self, path: str | Path) -> None:
        with open(path, "w", encoding="utf-8") as f:
            for d in self.dropped:
                f.write(json.dumps(d.__dict__, ensure_ascii=False) + "\n")


class _RowTransform:
    """``with_transform`` callable: a batch of row numbers → the decoded GRPO rows (picklable)."""

    KEYS = ("id", "prompt", "images", "answer", "qtype", "question", "meta")

    def __init__(self, prompts: GRPOPrompts):
        self.prompts = prompts

    def __call__(self, batch: dict) -> dict:
        rows = [self.prompts.row(int(i)) for i in batch["row"]]
        return {k: [r[k] for r in rows] for k in self.KEYS}


class _Drop(Exception):
    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail
