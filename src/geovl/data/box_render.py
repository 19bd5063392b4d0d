"""A grounding sample in a model family's box convention: datasets keep boxes in stored-image pixels
(:mod:`geovl.data.boxes`); the family's convention (:mod:`geovl.models.box_format`) is applied to the
image the boxes lie on. This is what SFT trains on and how evaluation reads a grounding answer."""

from __future__ import annotations

from ..models.box_format import BoxFrame, frame_for, render
from .boxes import box_image
from .inspect import image_size


def sample_frame(sample: dict, family, min_pixels: int | None = None, max_pixels: int | None = None) -> BoxFrame:
    """The frame of the image a grounding sample's boxes lie on (``SampleError`` if they span images)."""
    meta = sample.get("meta") or {}
    k = box_image(meta.get("boxes") or [], len(sample["images"]))
    w, h = image_size(bytes(sample["images"][k]))
    return frame_for(family, w, h, min_pixels, max_pixels)


def render_sample(sample: dict, family, min_pixels: int | None = None, max_pixels: int | None = None) -> dict:
    """A copy of a grounding sample whose last assistant turn is the boxes in ``family``'s convention
    (other samples are returned unchanged). This is what SFT trains on."""
    if sample.get("qtype") != "grounding":
        return sample
    frame = sample_frame(sample, family, min_pixels, max_pixels)
    text = render(frame, (sample.get("meta") or {}).get("boxes") or [])
    msgs = [dict(m) for m in sample["messages"]]
    for i in range(len(msgs) - 1, -1, -1):
        if msgs[i]["role"] == "assistant":
            msgs[i] = {"role": "assistant", "content": [{"type": "text", "text": text}]}
            break
    return dict(sample, messages=msgs, answer=text)
