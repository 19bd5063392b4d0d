"""Training data: dataset files → processed model inputs with assistant-only labels.

- Samples are read from Parquet memory-mapped (images are paged in when used) or JSONL.
- A pre-pass computes each sample's exact sequence length (chat template + tokenizer for the
  text, registry token maths for the images, from image headers only). A sample over the
  per-sample visual-token budget or the sequence budget is dropped whole and recorded — never
  truncated inside its image tokens.
- ``__getitem__`` decodes and processes one sample (runs in DataLoader workers).
- Labels: every assistant turn's tokens from after ``<|im_start|>assistant\\n`` through its
  ``<|im_end|>`` are learned; everything else (system, user, image pads, padding) is -100.
  This works with any Qwen chat template, with or without ``{% generation %}`` markers.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import pyarrow as pa
import pyarrow.parquet as pq
import torch
from PIL import Image

from ..data.io import DatasetFileError, read_samples
from ..data.io import _from_row as row_to_sample
from ..data.schema import COLUMNS

IGNORE = -100


def _open_table(path: Path) -> pa.Table | list[dict]:
    if not path.exists():
        raise DatasetFileError(f"{path}: no such dataset file")
    if path.suffix == ".parquet":
        try:
            table = pq.read_table(path, memory_map=True)
        except Exception as e:  # noqa: BLE001
            raise DatasetFileError(f"{path}: not a readable Parquet file ({e})") from e
        missing = [c for c in COLUMNS if c != "meta" and c not in table.column_names]
        if missing:
            raise DatasetFileError(
                f"{path}: missing column(s) {missing}; expected a geovl dataset with columns {list(COLUMNS)} "
                "(convert your data with `geovl data convert`)"
            )
        return table
    return list(read_samples(path))


def _row(table, i: int) -> dict:
    if isinstance(table, list):
        return table[i]
    return row_to_sample(table.slice(i, 1).to_pylist()[0])


def assistant_label_mask(input_ids: Sequence[int], start_marker: Sequence[int], end_id: int) -> list[bool]:
    """True for tokens of every assistant answer (after the start marker, through ``end_id``)."""
    ids = list(input_ids)
    m = list(start_marker)
    mask = [False] * len(ids)
    i = 0
    n = len(m)
    while i <= len(ids) - n:
        if ids[i : i + n] == m:
            j = i + n
            while j < len(ids):
                mask[j] = True
                if ids[j] == end_id:
                    break
                j += 1
            i = j + 1
        else:
            i += 1
    return mask


@dataclass
class Dropped:
    id: str
    reason: str
    detail: str


class SFTDataset(torch.utils.data.Dataset):
    def __init__(
        self,
        paths: Sequence[str | Path],
        processor,
        family,
        max_visual_tokens: int | None = None,
        max_length: int | None = None,
        min_pixels: int | None = None,
        max_pixels: int | None = None,
        progress: bool = True,
    ):
        from ..data.inspect import image_size

        self.processor = processor
        self.tok = processor.tokenizer
        self.family = family
        self.min_pixels = min_pixels
        self.max_pixels = max_pixels
        self.start_marker = self.tok.encode("<|im_start|>assistant\n", add_special_tokens=False)
        self.end_id = self.tok.convert_tokens_to_ids("<|im_end|>")
        self.tables = [_open_table(Path(p)) for p in paths]
        self.index: list[tuple[int, int]] = []
        self.lengths: list[int] = []
        self.ids: list[str] = []
        self.dropped: list[Dropped] = []
        self.n_read = 0
        total = sum(len(t) if isinstance(t, list) else t.num_rows for t in self.tables)
        it = ((ti, ri) for ti, t in enumerate(self.tables) for ri in range(len(t) if isinstance(t, list) else t.num_rows))
        if progress:
            from tqdm import tqdm

            it = tqdm(it, total=total, desc="measure samples", unit="sample", leave=False)
        for ti, ri in it:
            s = _row(self.tables[ti], ri)
            self.n_read += 1
            vis = 0
            for b in s["images"]:
                w, h = image_size(b)
                vis += family.image_tokens(h, w, min_pixels, max_pixels)
            text = processor.apply_chat_template(s["messages"], tokenize=False)
            text_ids = self.tok(text, add_special_tokens=False)["input_ids"]
            n_text = len(text_ids)
            length = n_text + vis - len(s["images"])
            if max_visual_tokens is not None and vis > max_visual_tokens:
                self.dropped.append(Dropped(s["id"], "over_visual_token_budget", f"{vis} > {max_visual_tokens}"))
                continue
            if max_length is not None and length > max_length:
                self.dropped.append(Dropped(s["id"], "over_max_length", f"{length} > {max_length}"))
                continue
            if not any(assistant_label_mask(text_ids, self.start_marker, self.end_id)):
                self.dropped.append(Dropped(s["id"], "no_assistant_tokens", "nothing to learn in this sample"))
                continue
            self.index.append((ti, ri))
            self.lengths.append(length)
            self.ids.append(s["id"])

    def __len__(self) -> int:
        return len(self.index)

    def write_dropped(self, path: str | Path) -> None:
        with open(path, "w", encoding="utf-8") as f:
            for d in self.dropped:
                f.write(json.dumps(d.__dict__, ensure_ascii=False) + "\n")

    def summary(self) -> dict:
        reasons: dict[str, int] = {}
        for d in self.dropped:
            reasons[d.reason] = reasons.get(d.reason, 0) + 1
        return {"read": self.n_read, "kept": len(self), "dropped": len(self.dropped), "dropped_by_reason": reasons}

    def sample(self, i: int) -> dict:
        ti, ri = self.index[i]
        return _row(self.tables[ti], ri)

    def __getitem__(self, i: int) -> dict:
        s = self.sample(i)
        return encode_sample(self.processor, s, self.start_marker, self.end_id)


def encode_sample(processor, s: dict, start_marker, end_id) -> dict:
    images = [Image.open(io.BytesIO(b)).convert("RGB") for b in s["images"]]
    text = processor.apply_chat_template(s["messages"], tokenize=False)
    enc = processor(text=[text], images=images or None, return_tensors="pt")
    ids = enc["input_ids"][0]
    mask = torch.tensor(assistant_label_mask(ids.tolist(), start_marker, end_id), dtype=torch.bool)
    labels = torch.where(mask, ids, torch.full_like(ids, IGNORE))
    out = {
        "input_ids": ids,
        "attention_mask": enc["attention_mask"][0],
        "labels": labels,
        "sample_id": s["id"],
    }
    if "mm_token_type_ids" in enc:
        out["mm_token_type_ids"] = enc["mm_token_type_ids"][0]
    if images:
        out["pixel_values"] = enc["pixel_values"]
        out["image_grid_thw"] = enc["image_grid_thw"]
    return out


class SFTCollator:
    """Right-pads a list of encoded samples into a batch; concatenates image patches in order."""

    def __init__(self, pad_token_id: int):
        self.pad = pad_token_id

    def __call__(self, features: list[dict]) -> dict:
        n = max(f["input_ids"].shape[0] for f in features)
        b = len(features)
        input_ids = torch.full((b, n), self.pad, dtype=torch.long)
        attention = torch.zeros((b, n), dtype=torch.long)
        labels = torch.full((b, n), IGNORE, dtype=torch.long)
        has_mm = "mm_token_type_ids" in features[0]
        mm = torch.zeros((b, n), dtype=torch.long) if has_mm else None
        for i, f in enumerate(features):
            L = f["input_ids"].shape[0]
            input_ids[i, :L] = f["input_ids"]
            attention[i, :L] = f["attention_mask"]
            labels[i, :L] = f["labels"]
            if has_mm:
                mm[i, :L] = f["mm_token_type_ids"]
        batch = {"input_ids": input_ids, "attention_mask": attention, "labels": labels}
        if has_mm:
            batch["mm_token_type_ids"] = mm
        with_images = [f for f in features if "pixel_values" in f]
        if with_images:
            batch["pixel_values"] = torch.cat([f["pixel_values"] for f in with_images], dim=0)
            batch["image_grid_thw"] = torch.cat([f["image_grid_thw"] for f in with_images], dim=0)
        batch["sample_ids"] = [f["sample_id"] for f in features]
        return batch
