"""``geovl infer``: ask a model about images.

- ``--image A.png [--image B.tif ...] --question Q``: one request with all images; the answer is
  streamed to stdout as it is generated.
- ``--video V.mp4 [--image A.png ...] --question Q``: one request with the images and videos (videos sampled
  by the engine with the model's video settings, ``geovl_preprocess.json`` ``video``).
- ``--images LIST.txt --question Q --out results.jsonl``: one request per listed image (a path per
  line; relative paths are tried from the current folder, then from the list's folder), batched;
  records ``{"image", "question", "prediction"}`` in list order. An unreadable image goes to
  ``<out stem>.rejects.jsonl`` with its reason; read = written + rejected.
- ``--data FILE --out results.jsonl [--compare-gt]``: the eval driver, plus ``correct`` per record
  (and, for structured answers, ``structured``: parsed fields and per-field scores).

Images are read with :func:`geovl.imagery.decode.load_image` (rasters rendered to RGB by
:mod:`geovl.imagery.render` with the model's preprocessing config's render settings — the same
bytes ``data convert`` would store).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import TextIO

from .data.schema import user_turn
from .imagery.decode import ImageError, load_image
from .inference.engine import ChatRequest, GenerationParams


def load_for_model(path: str | os.PathLike, preprocess=None, bands=None):
    """The :class:`~geovl.imagery.decode.LoadedImage` a request carries for an image file: validated,
    rasters rendered with the model's render settings (and ``--bands`` when the config fixes none)
    by the one function ``data convert`` uses too."""
    from .imagery.render import RenderError, RenderSettings

    try:
        settings = RenderSettings.from_preprocess(preprocess, bands)
    except RenderError as e:
        raise ImageError("bad_bands", str(e)) from None
    return load_image(path, render=settings)


def image_bytes(path: str | os.PathLike, preprocess=None, bands=None) -> bytes:
    """Encoded bytes of an image file for a request (see :func:`load_for_model`)."""
    return load_for_model(path, preprocess, bands).data


CUBE_SUFFIXES = (".hdr", ".img", ".npy")  # ENVI and .npy cubes: only a spectral model reads them


def request_image(path: str | os.PathLike, engine, bands=None):
    """What a request carries for an image file: encoded bytes, or for a model with a spectral projector the
    cube path (checked now: bands and wavelengths must match the projector)."""
    from .inference.capabilities import cube_reader, input_spec

    cubes = cube_reader(engine)
    if cubes is not None:
        cubes.cube(Path(path))  # ImageError (bad_cube) names the file and the mismatch
        return Path(path)
    return image_bytes(path, input_spec(engine).preprocess, bands)


def build_request(images: list[bytes], question: str, videos: list = ()) -> ChatRequest:
    """One user turn: the images, then the videos (bytes or paths), then the question."""
    turn = user_turn(question, len(images))
    if videos:
        turn["content"][len(images) : len(images)] = [{"type": "video"} for _ in videos]
    return ChatRequest([turn], list(images), list(videos))


def stream_answer(engine, request: ChatRequest, params: GenerationParams, out: TextIO | None = None) -> str:
    """Write the answer to ``out`` (stdout) as it arrives; returns the whole answer."""
    out = out or sys.stdout
    pieces = []
    for delta in engine.stream(request, params):
        out.write(delta)
        out.flush()
        pieces.append(delta)
    out.write("\n")
    out.flush()
    return "".join(pieces)


def read_image_list(list_file: str | os.PathLike) -> list[tuple[str, Path]]:
    """(path as written, resolved path) per non-blank, non-``#`` line."""
    list_file = Path(list_file)
    if not list_file.is_file():
        raise ImageError("missing_image", f"image list {list_file} does not exist")
    out = []
    for line in list_file.read_text(encoding="utf-8-sig").splitlines():
        ref = line.strip()
        if not ref or ref.startswith("#"):
            continue
        p = Path(ref).expanduser()
        if not p.is_absolute() and not p.exists():
            p = list_file.parent / ref
        out.append((ref, p))
    return out


def infer_list(engine, list_file, question: str, out, params: GenerationParams, progress: bool = True) -> dict:
    """Answer ``question`` for every image of ``list_file``; results JSONL + rejects (see module doc)."""
    from .data.io import rejects_path_for

    entries = read_image_list(list_file)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    rej_path = rejects_path_for(out)
    chunk = 4 * int(getattr(engine, "batch_size", None) or getattr(engine, "concurrency", 8))
    counts = {"read": 0, "written": 0, "rejected": 0, "out": str(out)}
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(entries), desc=f"infer ({engine.name})", unit="image", file=sys.stderr, dynamic_ncols=True)
    with open(out, "w", encoding="utf-8") as fout, open(rej_path, "w", encoding="utf-8") as frej:
        for s in range(0, len(entries), chunk):
            batch = []
            for ref, p in entries[s : s + chunk]:
                counts["read"] += 1
                try:
                    batch.append((ref, build_request([request_image(p, engine)], question)))
                except ImageError as e:
                    counts["rejected"] += 1
                    frej.write(
                        json.dumps({"source": ref, "reason": e.reason, "detail": e.detail}, ensure_ascii=False) + "\n"
                    )
            preds = engine.generate([r for _, r in batch], params) if batch else []
            for (ref, _), pred in zip(batch, preds):
                fout.write(
                    json.dumps({"image": ref, "question": question, "prediction": pred}, ensure_ascii=False) + "\n"
                )
            counts["written"] += len(batch)
            fout.flush()
            if bar is not None:
                bar.update(min(chunk, len(entries) - s))
    if bar is not None:
        bar.close()
    if counts["rejected"] == 0:
        rej_path.unlink(missing_ok=True)
    return counts
