"""Training data: dataset files → processed model inputs with assistant-only labels.

- Samples are read from Parquet one row group at a time (bounded memory, see :class:`ParquetRows`)
  or from JSONL (loaded whole: JSONL is for small sets).
- A pre-pass computes each sample's exact sequence length (chat template + tokenizer for the
  text, registry token maths for the images, from image headers only). A sample over the
  per-sample visual-token budget or the sequence budget is dropped whole and recorded — never
  truncated inside its image tokens.
- ``__getitem__`` decodes and processes one sample (runs in DataLoader workers).
- Videos (``{"type": "video"}`` parts, the ``videos`` column) are sampled into frames with the run's
  :class:`~geovl.imagery.video.VideoSettings` (streamed decode, at most ``max_frames`` frames) and fed
  to the processor as videos; the pre-pass counts each video's tokens with the processor itself on the
  sampled clip (Qwen3-VL's per-frame timestamps included), so lengths stay exact. A video that cannot
  be decoded drops its sample (``bad_video``, the decoder's reason in the detail).
- Labels: every assistant turn's tokens from after ``<|im_start|>assistant\\n`` through its
  ``<|im_end|>`` are learned; everything else (system, user, image pads, padding) is -100.
  This works with any Qwen chat template, with or without ``{% generation %}`` markers.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Collection, Sequence

import pyarrow as pa
import pyarrow.parquet as pq
import torch
from PIL import Image

from ..data.io import DatasetFileError, read_samples
from ..data.io import _from_row as row_to_sample
from ..data.schema import COLUMNS, OPTIONAL_COLUMNS

IGNORE = -100


class ParquetRows:
    """Random access to the rows of a geovl Parquet file with bounded memory.

    Rows are read one row group at a time (the writer makes groups of 64) and the last few groups
    are kept decoded, so memory stays at a few row groups however large the file is — a whole-file
    ``read_table`` would hold every (decompressed) image in RAM. Each process (DataLoader worker)
    opens its own file handle."""

    CACHE = 4

    def __init__(self, path: Path):
        self.path = path
        try:
            pf = pq.ParquetFile(path)
        except Exception as e:  # noqa: BLE001 - pyarrow raises several types for a bad file
            raise DatasetFileError(f"{path}: not a readable Parquet file ({e})") from e
        names = pf.schema_arrow.names
        missing = [c for c in COLUMNS if c != "meta" and c not in names]
        if missing:
            raise DatasetFileError(
                f"{path}: missing column(s) {missing}; expected a geovl dataset with columns {list(COLUMNS)} "
                "(convert your data with `geovl data convert`)"
            )
        self.columns = [c for c in (*COLUMNS, *OPTIONAL_COLUMNS) if c in names]  # videos: absent in older files
        self.starts = [0]
        for g in range(pf.metadata.num_row_groups):
            self.starts.append(self.starts[-1] + pf.metadata.row_group(g).num_rows)
        self._pf, self._pid = None, None
        self._cache: dict[int, pa.Table] = {}

    def __len__(self) -> int:
        return self.starts[-1]

    def __getstate__(self):  # file handles and decoded groups are per process
        return {**self.__dict__, "_pf": None, "_pid": None, "_cache": {}}

    def __getitem__(self, i: int) -> dict:
        import bisect
        import os

        if self._pid != os.getpid():
            self._pf, self._pid, self._cache = pq.ParquetFile(self.path), os.getpid(), {}
        g = bisect.bisect_right(self.starts, i) - 1
        table = self._cache.pop(g, None)
        if table is None:
            table = self._pf.read_row_group(g, columns=self.columns)
            while len(self._cache) >= self.CACHE:
                self._cache.pop(next(iter(self._cache)))
        self._cache[g] = table  # most recently used last
        return row_to_sample(table.slice(i - self.starts[g], 1).to_pylist()[0])


def _open_table(path: Path) -> ParquetRows | list[dict]:
    if not path.exists():
        raise DatasetFileError(f"{path}: no such dataset file")
    if path.suffix == ".parquet":
        return ParquetRows(path)
    return list(read_samples(path))


def assistant_label_mask(
    input_ids: Sequence[int], start_marker: Sequence[int], end_id: int, newline_led: Collection[int] = ()
) -> list[bool]:
    """True for tokens of every assistant answer (after the start marker, through ``end_id``).

    ``start_marker`` is the token ids of ``<|im_start|>assistant\\n``. An answer that itself begins
    with a newline merges with the marker's ``\\n`` into one token (``\\n\\n``); ``newline_led`` (ids of
    tokens that start with a newline) lets such a turn still be found: its labels start after that
    merged token."""
    ids = list(input_ids)
    m = list(start_marker)
    head = m[:-1]
    mask = [False] * len(ids)
    i = 0
    n = len(m)
    while i <= len(ids) - len(head) - 1:
        if ids[i : i + n] == m or (newline_led and ids[i : i + n - 1] == head and ids[i + n - 1] in newline_led):
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


def newline_led_ids(tokenizer) -> frozenset[int]:
    """Ids of tokens whose text starts with a newline (byte-level BPE shows ``\\n`` as ``Ċ``)."""
    return frozenset(i for t, i in tokenizer.get_vocab().items() if t.startswith(("Ċ", "\n")) and len(t) > 1)


@dataclass
class Dropped:
    id: str
    reason: str
    detail: str
    file: str = ""


class _Drop(Exception):
    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class MeasuredSamples:
    """The samples of one or more dataset files that a subclass's ``_measure`` accepts, with their exact lengths.

    One pre-pass reads every row once: ``_measure(sample, ti, ri)`` returns the length or raises
    :class:`_Drop` with the reason; kept rows are indexed (``index``, ``lengths``, ``ids``, and
    ``_keep`` for more), dropped ones recorded whole in ``dropped``. Samples are read again from the
    files when used (Parquet one row group at a time), so memory stays bounded. Counts conserve:
    ``read == kept + dropped``."""

    measure_desc = "measure samples / 统计样本"
    spectral = False  # see _init_spectral
    video_settings = None  # VideoSettings of the run (None: the defaults), see _clips

    def _init_spectral(self, spectral: bool, spectral_root) -> None:
        """spectral: each image is the hyperspectral cube named by ``meta.cube`` (relative to
        ``spectral_root``, default the dataset file's folder), fed through the model's spectral projector
        (see :mod:`geovl.spectral.vision_input`); set ``.projector`` before reading samples."""
        self.spectral = bool(spectral)
        self.spectral_root = Path(spectral_root) if spectral_root else None
        self.projector = None
        self.cubes: dict[tuple[int, int], list[Path]] = {}

    def _scan(self, paths: Sequence[str | Path], progress: bool) -> None:
        self.paths = [Path(p) for p in paths]
        self.tables = [_open_table(p) for p in self.paths]
        self.index: list[tuple[int, int]] = []
        self.lengths: list[int] = []
        self.ids: list[str] = []
        self.dropped: list[Dropped] = []
        self.n_read = 0
        it = ((ti, ri) for ti, t in enumerate(self.tables) for ri in range(len(t)))
        if progress:
            from tqdm import tqdm

            total = sum(len(t) for t in self.tables)
            it = tqdm(it, total=total, desc=self.measure_desc, unit="sample", leave=False)
        for ti, ri in it:
            s = self.tables[ti][ri]
            self.n_read += 1
            try:
                length = self._measure(s, ti, ri)
            except _Drop as d:
                self.dropped.append(Dropped(str(s.get("id", f"row{ri}")), d.reason, d.detail, str(self.paths[ti])))
                continue
            self.index.append((ti, ri))
            self.lengths.append(length)
            self.ids.append(s["id"])
            self._keep(s)

    def _measure(self, s: dict, ti: int, ri: int) -> int:  # pragma: no cover - abstract
        raise NotImplementedError

    def _keep(self, s: dict) -> None:
        """Called for every kept sample, in order (subclasses record more per-sample columns)."""

    def _image_sizes(self, images: list[bytes], s: dict, ti: int, ri: int) -> list[tuple[int, int]]:
        """(width, height) of each image (from its header), or in a spectral run of its cube; :class:`_Drop` if unreadable."""
        if self.spectral:
            return self._cube_sizes(s, ti, ri)
        from ..data.inspect import image_size

        sizes = []
        for k, b in enumerate(images):
            try:
                sizes.append(image_size(b))
            except Exception as e:  # noqa: BLE001 - any undecodable header / absurd size
                raise _Drop("bad_image", f"image {k}: {e}") from None
        return sizes

    def _clips(self, videos: list, where: str = "") -> list:
        """The sampled clips of a sample's videos; :class:`_Drop` (``bad_video``) when one cannot be decoded."""
        if not videos:
            return []
        from ..imagery.video import VideoError, VideoSettings
        from ..models.vision_input import read_clip

        settings = self.video_settings or VideoSettings()
        clips = []
        for k, b in enumerate(videos):
            try:
                clips.append(read_clip(b, settings))
            except VideoError as e:
                raise _Drop("bad_video", f"video {k}{where}: {getattr(e, 'reason', 'bad_video')}: {e}") from None
        return clips

    def _fit_videos(self, clips: list, base_vis: int, base_len: int) -> tuple[list[int], int, int]:
        """(frames per video, visual tokens, sequence length) of a sample with these clips under the run's budgets
        (``max_visual_tokens``, then ``max_length``), by the one rule of
        :func:`geovl.data.video_budget.fit_video_budget`: over a budget, frames are taken away in pairs from the
        costliest video (never below two), else the sample is dropped whole (:class:`_Drop`). Each video is
        counted exactly on its sampled (and thinned) clip: the registry's video maths and the processor's
        placeholder text (:func:`geovl.models.vision_input.video_prompt_tokens`; Qwen3-VL adds a timestamp and
        vision start/end per temporal patch). ``base_*``: the sample without its videos."""
        from ..data.video_budget import VideoShape, fit_video_budget, subsample_clip
        from ..models.vision_input import video_prompt_tokens

        if clips and self.spectral:
            raise _Drop("video_in_spectral_run", "a hyperspectral run reads cubes; video parts cannot be used")
        counted: dict[tuple[int, int], tuple[int, int]] = {}
        shapes = [VideoShape(len(c.frames), *c.frames[0].shape[:2], c.fps) for c in clips]
        clip_of = {id(x): k for k, x in enumerate(shapes)}  # a shape (as fit_video_budget passes it) → its clip

        def count(shape, n: int) -> tuple[int, int]:  # (visual tokens, tokens added beyond the placeholder)
            k = clip_of[id(shape)]
            if (k, n) not in counted:
                v, t = video_prompt_tokens(self.processor, self.family, subsample_clip(clips[k], n))
                counted[(k, n)] = (v, t - 1)
            return counted[(k, n)]

        fit = fit_video_budget(base_vis, shapes, self.max_visual_tokens, lambda sh, n: count(sh, n)[0])
        if not fit.kept:
            raise _Drop(
                "over_visual_token_budget",
                f"{fit.tokens} visual tokens > max_visual_tokens={self.max_visual_tokens}"
                + (" (even at 2 frames per video)" if clips else ""),
            )
        thinned = [VideoShape(n, sh.height, sh.width, sh.fps) for sh, n in zip(shapes, fit.frames)]
        clip_of.update({id(x): k for k, x in enumerate(thinned)})
        fit2 = fit_video_budget(base_len, thinned, self.max_length, lambda sh, n: count(sh, n)[1])
        if not fit2.kept:
            raise _Drop(
                "over_max_length",
                f"{fit2.tokens} tokens > max_length={self.max_length}"
                + (" (even at 2 frames per video)" if clips else ""),
            )
        vis = base_vis + sum(count(sh, n)[0] for sh, n in zip(thinned, fit2.frames))
        return fit2.frames, vis, fit2.tokens

    def _visual_tokens(self, sizes: list[tuple[int, int]]) -> int:
        vis = 0
        for k, (w, h) in enumerate(sizes):
            try:
                vis += self.family.image_tokens(h, w, self.min_pixels, self.max_pixels)
            except Exception as e:  # noqa: BLE001 - absurd size
                raise _Drop("bad_image", f"image {k}: {e}") from None
        return vis

    def _cube_sizes(self, s: dict, ti: int, ri: int) -> list[tuple[int, int]]:
        """(width, height) of each image's cube (headers only); remembers the cube paths."""
        from ..spectral import SpectralError
        from ..spectral.readers import open_cube
        from ..spectral.vision_input import sample_cube_paths

        root = self.spectral_root or self.paths[ti].parent
        try:
            paths = sample_cube_paths(s, root)
        except SpectralError as e:
            raise _Drop("no_cube", str(e)) from None
        sizes = []
        for p in paths:
            try:
                with open_cube(p) as c:
                    sizes.append((c.cols, c.rows))
            except (SpectralError, OSError) as e:
                raise _Drop("bad_cube", str(e)) from None
        self.cubes[(ti, ri)] = paths
        return sizes

    def cube_files(self) -> list[Path]:
        """Every cube of the kept samples, once, in dataset order."""
        return list(dict.fromkeys(p for key in self.index for p in self.cubes.get(key, ())))

    def cube_tensors(self, i: int) -> list:
        """The model input (bands, rows, cols) of each image of kept sample ``i`` of a spectral run."""
        from ..spectral.vision_input import cube_tensor

        if self.projector is None:
            raise RuntimeError(
                "spectral samples: set .projector (the model's SpectralProjector) before reading samples"
            )
        return [cube_tensor(p, self.projector) for p in self.cubes[self.index[i]]]

    def __len__(self) -> int:
        return len(self.index)

    def sample(self, i: int) -> dict:
        ti, ri = self.index[i]
        return self.tables[ti][ri]

    def write_dropped(self, path: str | Path) -> None:
        """One JSON line per dropped sample: id, reason, detail, file."""
        with open(path, "w", encoding="utf-8") as f:
            for d in self.dropped:
                f.write(json.dumps(d.__dict__, ensure_ascii=False) + "\n")

    def summary(self) -> dict:
        reasons: dict[str, int] = {}
        for d in self.dropped:
            reasons[d.reason] = reasons.get(d.reason, 0) + 1
        return {"read": self.n_read, "kept": len(self), "dropped": len(self.dropped), "dropped_by_reason": reasons}


class SFTDataset(MeasuredSamples, torch.utils.data.Dataset):
    """Samples of one or more dataset files that fit the budgets, with their exact lengths.

    ``lengths[i]`` is the number of LLM input tokens sample ``i`` becomes (text + image tokens);
    ``dropped`` lists every sample left out whole, with the reason (``bad_schema``, ``bad_image``,
    ``over_visual_token_budget``, ``over_max_length``, ``no_assistant_tokens``, ``bad_video``; spectral runs
    also ``no_cube``, ``bad_cube``, ``video_in_spectral_run``). Videos are sampled with ``video_settings``
    (a :class:`~geovl.imagery.video.VideoSettings`; None: its defaults); a video sample over a budget first
    loses frames in pairs (:func:`geovl.data.video_budget.fit_video_budget`, counted as ``video_subsampled``
    in :meth:`summary` when there are video samples; ``video_frames`` says how many each video keeps) and is dropped only when two frames
    per video do not fit. Counts conserve:
    ``read == kept + dropped``."""

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
        spectral: bool = False,
        spectral_root: str | Path | None = None,
        video_settings=None,
    ):
        self.processor = processor
        self._init_spectral(spectral, spectral_root)
        self.video_settings = video_settings
        self.tok = processor.tokenizer
        self.family = family
        self.min_pixels = min_pixels
        self.max_pixels = max_pixels
        self.max_visual_tokens = max_visual_tokens
        self.max_length = max_length
        self.start_marker = self.tok.encode("<|im_start|>assistant\n", add_special_tokens=False)
        self.end_id = self.tok.convert_tokens_to_ids("<|im_end|>")
        self.newline_led = newline_led_ids(self.tok)
        self.video_tokens: list[int] = []  # visual tokens of each kept sample's videos (the memory guard adds them)
        self.video_frames: dict[int, list[int]] = {}  # kept sample → frames per video, where the budget thinned them
        self._scan(paths, progress)

    def _keep(self, s: dict) -> None:
        self.video_tokens.append(self._last_video[0])
        if self._last_video[1] is not None:
            self.video_frames[len(self.index) - 1] = self._last_video[1]

    def summary(self) -> dict:
        """As :meth:`MeasuredSamples.summary`; with video samples kept, also ``video_subsampled`` (how many the
        budget thinned)."""
        out = super().summary()
        if any(self.video_tokens):
            out["video_subsampled"] = len(self.video_frames)
        return out

    def _measure(self, s: dict, ti: int, ri: int) -> int:
        """Exact LLM sequence length of a sample, or :class:`_Drop` with the reason."""
        from ..data.schema import SampleError, validate_sample

        try:
            validate_sample(s)
            s = self._family_form(s)
        except SampleError as e:
            raise _Drop(e.reason, e.detail) from None
        vis = self._visual_tokens(self._image_sizes(s["images"], s, ti, ri))
        text = self.processor.apply_chat_template(s["messages"], tokenize=False)
        text_ids = self.tok(text, add_special_tokens=False)["input_ids"]
        length = len(text_ids) + vis - len(s["images"])  # each <|image_pad|> placeholder becomes `vis` tokens
        clips = self._clips(s.get("videos") or [])
        frames, all_vis, length = self._fit_videos(clips, vis, length)  # images and text only: a plain check
        thinned = frames != [len(c.frames) for c in clips]
        if not any(assistant_label_mask(text_ids, self.start_marker, self.end_id, self.newline_led)):
            raise _Drop("no_assistant_tokens", "no assistant turn found: nothing to learn in this sample")
        self._last_video = (all_vis - vis, frames if thinned else None)
        return length

    def _family_form(self, s: dict) -> dict:
        """Grounding answers in the family's own box convention, rescaled for the run's pixel bounds
        (:func:`geovl.data.box_render.render_sample`); other samples unchanged."""
        from ..data.box_render import render_sample

        return render_sample(s, self.family, self.min_pixels, self.max_pixels)

    def _sample_clips(self, i: int, s: dict) -> list:
        """Kept sample ``i``'s clips, thinned as its budget fit decided."""
        from ..data.video_budget import subsample_clip

        clips = self._clips(s.get("videos") or [])
        frames = self.video_frames.get(i)
        return [subsample_clip(c, n) for c, n in zip(clips, frames)] if frames else clips

    def __getitem__(self, i: int) -> dict:
        s = self._family_form(self.sample(i))
        if not self.spectral:
            return encode_sample(
                self.processor,
                s,
                self.start_marker,
                self.end_id,
                self.newline_led,
                videos=self._sample_clips(i, s) or None,
            )
        from ..spectral.vision_input import PROCESSOR_KWARGS

        return encode_sample(
            self.processor, s, self.start_marker, self.end_id, self.newline_led, self.cube_tensors(i), PROCESSOR_KWARGS
        )


def encode_sample(
    processor,
    s: dict,
    start_marker,
    end_id,
    newline_led: Collection[int] = (),
    images=None,
    image_kwargs: dict | None = None,
    videos=None,
) -> dict:
    """Process one sample: ``input_ids`` with image and video pads expanded, ``labels`` = ids on assistant
    tokens of every assistant turn and -100 elsewhere, image patches and grids (video patches and grids).
    ``images`` replaces the sample's decoded images (e.g. hyperspectral cubes, with ``image_kwargs`` for the
    processor); ``videos`` are the sampled clips of its video parts
    (:func:`geovl.models.vision_input.read_clip`)."""
    from ..models.vision_input import video_processor_kwargs

    if images is None:
        images = [Image.open(io.BytesIO(b)).convert("RGB") for b in s["images"]]
    text = processor.apply_chat_template(s["messages"], tokenize=False)
    enc = processor(
        text=[text],
        images=images or None,
        return_tensors="pt",
        **(image_kwargs or {}),
        **video_processor_kwargs(videos),
    )
    ids = enc["input_ids"][0]
    mask = torch.tensor(assistant_label_mask(ids.tolist(), start_marker, end_id, newline_led), dtype=torch.bool)
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
    if videos:
        for k in VIDEO_KEYS:
            if k in enc:
                out[k] = torch.as_tensor(enc[k])
    return out


# per-video model inputs, concatenated over a batch in sample order (second_per_grid_ts: Qwen2.5-VL only)
VIDEO_KEYS = ("pixel_values_videos", "video_grid_thw", "second_per_grid_ts")


def _cat_visual(batch: dict, features: list[dict]) -> None:
    """Image patches/grids and video patches/grids of ``features`` concatenated in order into ``batch``."""
    for keys in (("pixel_values", "image_grid_thw"), VIDEO_KEYS):
        for k in keys:
            parts = [f[k] for f in features if k in f]
            if parts:
                batch[k] = torch.cat(parts, dim=0)


class SFTCollator:
    """Right-pads a list of encoded samples into a batch; concatenates image patches in order.

    Packed rows (items ``{"packed": [samples]}`` of :class:`geovl.train.packing.PackedSFTDataset`) become one row
    without padding: see :meth:`pack`."""

    def __init__(self, pad_token_id: int):
        self.pad = pad_token_id

    @staticmethod
    def pack(samples: list[dict]) -> dict:
        """Concatenate encoded samples into one row (batch dimension 1) with no padding and no ``attention_mask``;
        ``packed_seq_lens`` tells the model (:func:`geovl.train.packing.enable_packing`) where each sample starts.
        The first label of every sample is -100, so no sample learns to predict the next one's first token."""
        labels = []
        for f in samples:
            lab = f["labels"].clone()
            lab[0] = IGNORE
            labels.append(lab)
        batch = {
            "input_ids": torch.cat([f["input_ids"] for f in samples])[None],
            "labels": torch.cat(labels)[None],
            "packed_seq_lens": torch.tensor([f["input_ids"].shape[0] for f in samples]),
        }
        if any("mm_token_type_ids" in f for f in samples):
            batch["mm_token_type_ids"] = torch.cat(
                [f.get("mm_token_type_ids", torch.zeros_like(f["input_ids"])) for f in samples]
            )[None]
        _cat_visual(batch, samples)
        batch["sample_ids"] = [f["sample_id"] for f in samples]
        return batch

    def __call__(self, features: list[dict]) -> dict:
        if "packed" in features[0]:
            return self.pack([f for row in features for f in row["packed"]])
        n = max(f["input_ids"].shape[0] for f in features)
        b = len(features)
        input_ids = torch.full((b, n), self.pad, dtype=torch.long)
        attention = torch.zeros((b, n), dtype=torch.long)
        labels = torch.full((b, n), IGNORE, dtype=torch.long)
        has_mm = any("mm_token_type_ids" in f for f in features)
        mm = torch.zeros((b, n), dtype=torch.long) if has_mm else None
        for i, f in enumerate(features):
            L = f["input_ids"].shape[0]
            input_ids[i, :L] = f["input_ids"]
            attention[i, :L] = f["attention_mask"]
            labels[i, :L] = f["labels"]
            if has_mm and "mm_token_type_ids" in f:
                mm[i, :L] = f["mm_token_type_ids"]
        batch = {"input_ids": input_ids, "attention_mask": attention, "labels": labels}
        if has_mm:
            batch["mm_token_type_ids"] = mm
        _cat_visual(batch, features)
        batch["sample_ids"] = [f["sample_id"] for f in features]
        return batch
