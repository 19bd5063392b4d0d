"""Reference and predicted boxes drawn on an image (compare reports, the grounding demo, the web app)."""

from __future__ import annotations

import io

REF_COLOUR = (40, 200, 80)  # green: reference
PRED_COLOUR = (230, 40, 40)  # red: prediction


def draw_boxes(image: bytes, ref: list[dict] | None = None, pred: list[dict] | None = None, scale: int = 1) -> bytes:
    """PNG of ``image`` with reference boxes in green and predicted ones in red (stored-image pixels),
    enlarged ``scale`` times (nearest neighbour) so thin boxes stay visible on small images."""
    from PIL import Image, ImageDraw

    img = Image.open(io.BytesIO(image)).convert("RGB")
    if scale > 1:
        img = img.resize((img.width * scale, img.height * scale), Image.NEAREST)
    d = ImageDraw.Draw(img)
    for boxes, colour in ((ref or [], REF_COLOUR), (pred or [], PRED_COLOUR)):
        for b in boxes:
            x1, y1, x2, y2 = (float(v) * scale for v in b["bbox"])
            if x2 > x1 and y2 > y1:
                d.rectangle([x1, y1, x2 - 1, y2 - 1], outline=colour, width=max(1, scale))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()
