"""GRPO prompts: dataset files → a ``datasets.Dataset`` in the form ``trl.GRPOTrainer`` reads.

Each sample becomes a prompt — its conversation up to (excluding) the last assistant turn, split
exactly as ``geovl eval`` does (:func:`geovl.evaluate.generate.split_prompt`) — plus the columns the
reward functions read: ``answer`` (that turn's text), ``qtype``, ``question`` (the last user turn),
``meta`` and ``id``; ``videos`` (the sampled clips of its video parts, decoded on access); and ``images``
(PIL images, decoded on access; for a policy with a spectral
projector the samples' hyperspectral cubes, ``meta.cube``, as (bands, rows, cols) tensors).

A pre-pass measures each prompt's exact length (chat template with the generation prompt +
registry image-token maths from image headers, under the run's pixel bounds). Prompts over
``max_prompt_length`` (or samples over ``max_visual_tokens``) are dropped whole and recorded —
never truncated (cutting image tokens breaks the model). Counts conserve: ``read = kept + dropped``.
Video parts (``{"type": "video"}``, the ``videos`` column) are sampled with the run's
:class:`~geovl.imagery.video.VideoSettings` and counted exactly as in SFT (the registry's video maths and the
processor's placeholder text, :meth:`MeasuredSamples._fit_videos`); a video prompt over a budget loses frames
in pairs (``video_subsampled`` in :meth:`GRPOPrompts.summary`) and is dropped whole only when two frames per
video do not fit (:func:`geovl.data.video_budget.fit_video_budget`). Rows carry the sampled (thinned) clips in
``videos``; :class:`geovl.train.grpo_trainer.GeoVLGRPOTrainer` feeds them to generation and to every loss forward.

The ``datasets.Dataset`` holds only row numbers; samples are read from the files (Parquet one row
group at a time, see :class:`geovl.train.data.ParquetRows`) and images decoded when TRL asks for a
row, so memory stays bounded for large files.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Sequence

from .data import MeasuredSamples, _Drop


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


class GRPOPrompts(MeasuredSamples):
    """The usable prompts of one or more dataset files, with their exact prompt lengths."""

    measure_desc = "measure prompts / 统计提示"

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
        spectral: bool = False,
        spectral_root: str | Path | None = None,
        video_settings=None,
    ):
        self.processor = processor
        self.video_settings = video_settings  # None: VideoSettings() defaults
        self._init_spectral(spectral, spectral_root)  # a spectral policy: the images are the samples' cubes
        self.family = family
        self.max_prompt_length = max_prompt_length
        self.max_length = max_prompt_length  # the sequence budget _fit_videos applies: here the prompt's
        self.max_visual_tokens = max_visual_tokens
        self.min_pixels, self.max_pixels = min_pixels, max_pixels
        self.qtypes: list[str] = []
        self.video_frames: dict[int, list[int]] = {}  # kept prompt → frames per video, where the budget thinned them
        self.n_video = 0  # kept prompts with at least one video
        self._last_frames = None
        self._scan(paths, progress)

    def _keep(self, s: dict) -> None:
        self.qtypes.append(s["qtype"])
        if s.get("videos"):
            self.n_video += 1
        if self._last_frames is not None:
            self.video_frames[len(self.index) - 1] = self._last_frames

    def _measure(self, s: dict, ti: int, ri: int) -> int:
        from ..data.schema import SampleError

        try:
            row = _prompt_row(s)
            if s["qtype"] == "grounding":
                from ..data.box_render import sample_frame

                sample_frame(s, self.family, self.min_pixels, self.max_pixels)  # boxes on one image
        except SampleError as e:
            raise _Drop(e.reason, e.detail) from None
        if not row["answer"].strip():
            raise _Drop("empty_answer", "no reference answer to reward against")
        vis = self._visual_tokens(self._image_sizes(row["images"], s, ti, ri))
        text = self.processor.apply_chat_template(row["prompt"], tokenize=False, add_generation_prompt=True)
        n_text = len(self.processor.tokenizer(text, add_special_tokens=False)["input_ids"])
        length = n_text + vis - len(row["images"])  # each <|image_pad|> placeholder becomes its visual tokens
        self._last_frames = None
        clips = self._clips(s.get("videos") or [])
        if clips:  # each <|video_pad|> placeholder becomes its video's tokens; over a budget: fewer frames or drop
            try:
                frames, vis, length = self._fit_videos(clips, vis, length)
            except _Drop as d:
                if d.reason != "over_max_length":
                    raise
                raise _Drop("over_max_prompt_length", d.detail.replace("max_length", "max_prompt_length")) from None
            if frames != [len(c.frames) for c in clips]:
                self._last_frames = frames
            return length
        if self.max_visual_tokens is not None and vis > self.max_visual_tokens:
            raise _Drop("over_visual_token_budget", f"{vis} visual tokens > max_visual_tokens={self.max_visual_tokens}")
        if self.max_prompt_length is not None and length > self.max_prompt_length:
            raise _Drop(
                "over_max_prompt_length", f"prompt of {length} tokens > max_prompt_length={self.max_prompt_length}"
            )
        return length

    def row(self, i: int) -> dict:
        """The decoded GRPO row ``i`` (PIL images; in a spectral run the cubes as (bands, rows, cols) tensors)."""
        from PIL import Image

        s = self.sample(i)
        row = _prompt_row(s)
        if s["qtype"] == "grounding":  # the rewards read the policy's boxes back into stored-image pixels
            from ..data.box_render import sample_frame

            row["meta"]["box_frame"] = sample_frame(s, self.family, self.min_pixels, self.max_pixels).as_dict()
        if self.spectral:
            row["images"] = self.cube_tensors(i)
        else:
            row["images"] = [Image.open(io.BytesIO(b)).convert("RGB") for b in row["images"]]
        row["videos"] = self._row_clips(i, s)
        return row

    def _row_clips(self, i: int, s: dict) -> list:
        """Kept prompt ``i``'s sampled clips (:class:`~geovl.imagery.video.Clip`), thinned as its budget fit decided."""
        from ..data.video_budget import subsample_clip

        clips = self._clips(s.get("videos") or [])
        frames = self.video_frames.get(i)
        return [subsample_clip(c, n) for c, n in zip(clips, frames)] if frames else clips

    def to_dataset(self):
        """A ``datasets.Dataset`` whose rows are :meth:`row` (decoded when accessed)."""
        from datasets import Dataset

        ds = Dataset.from_dict({"row": list(range(len(self)))})
        return ds.with_transform(_RowTransform(self))

    def summary(self) -> dict:
        by_qtype: dict[str, int] = {}
        for q in self.qtypes:
            by_qtype[q] = by_qtype.get(q, 0) + 1
        out = {**super().summary(), "kept_by_qtype": by_qtype}
        if self.n_video:  # with video prompts kept: how many, and how many the budget thinned
            out.update(video_prompts=self.n_video, video_subsampled=len(self.video_frames))
        return out


class _RowTransform:
    """``with_transform`` callable: a batch of row numbers → the decoded GRPO rows (picklable)."""

    KEYS = ("id", "prompt", "images", "videos", "answer", "qtype", "question", "meta")

    def __init__(self, prompts: GRPOPrompts):
        self.prompts = prompts

    def __call__(self, batch: dict) -> dict:
        rows = [self.prompts.row(int(i)) for i in batch["row"]]
        return {k: [r[k] for r in rows] for k in self.KEYS}
