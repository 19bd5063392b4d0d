"""Georeferenced measurement and grounded answers over HTTP (added to ``geovl serve`` by
:func:`add_geo_routes`; documented in docs/serving.md).

- ``POST /v1/geo/measure`` → ``{"object": "geovl.measurement", "measurement": <geovl measure --json
  document>, "context": <the text the model is given>, "lang", "geojson": <change patches, EPSG:4326>
  | null}``.
- ``POST /v1/geo/ask`` → ``{"object": "geovl.grounded_answer", "answer", "measurement", "context",
  "prompt", "question", "lang", "model", "usage", "finish_reason"}``: the fixed grounded prompt of
  :mod:`geovl.geo.ask`, answered through the server's micro-batcher like any chat request.
- ``POST /v1/chat/completions`` with the request extension ``"geovl": {"grounded": true, …}``: the
  last user message's one GeoTIFF (or two: before, then after) and its text become the grounded
  prompt; the normal OpenAI response (or stream) comes back with an extra ``"geovl"`` member
  (in the first chunk when streaming) holding the measurement, context and prompt. Requests
  without ``"geovl"`` are untouched.

Inputs, as JSON (``application/json``) or ``multipart/form-data`` (files, or the same references as
form fields): ``image`` (the later/only date), ``before``, ``classes``, ``before_classes`` — GeoTIFFs
given as data URIs, bare base64, or URLs/paths under the server's image rules — plus ``class_table``
(``worldcover`` | ``dynamicworld`` | ``synth`` | ``derived`` or an inline table object), ``aoi`` (a
GeoJSON object), ``aoi_crs``, ``bands`` (e.g. ``blue,green,red,nir``), ``lang`` (zh|en) and
``geojson`` (measure only). Every file passes :func:`geovl.serve.images.check_image` (bytes, pixels
read from the header before decoding, one full read) exactly like chat images; then it must be a TIFF
(400 ``not_a_geotiff``) with a CRS (400 ``no_crs``). Measurement problems are 400 ``measure_error``
with the message of :class:`~geovl.geo.errors.MeasureError` (file names are the field names).
"""

from __future__ import annotations

import json
import re
import tempfile
import time
import uuid
from pathlib import Path
from typing import Literal

from fastapi import Request
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.concurrency import run_in_threadpool

from ..geo.tables import auto_class_table
from ..inference.capabilities import input_spec
from ..inference.engine import EngineError
from .images import ImageRefError, check_image, fetch_image, image_format
from .openai_format import APIError, check_json, generation_params, parse_json, usage_dict, validation_message

FIELDS = ("image", "before", "classes", "before_classes")
BUILTIN_TABLES = ("worldcover", "dynamicworld", "synth", "derived")
_B64 = re.compile(r"[A-Za-z0-9+/=\s]{16,}")


class GeoOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    class_table: str | dict | None = None
    aoi: dict | None = None
    aoi_crs: str | None = None
    bands: str | None = None
    lang: Literal["zh", "en"] | None = None


class MeasureBody(GeoOptions):
    image: str | None = None
    before: str | None = None
    classes: str | None = None
    before_classes: str | None = None
    geojson: bool = False


class AskBody(MeasureBody):
    question: str = Field(min_length=1)
    model: str | None = None
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    seed: int | None = None


class ChatGeo(GeoOptions):
    grounded: bool = True
    classes: list[str] | None = Field(default=None, max_length=2)  # class rasters of the dates, before then after


def _validate(cls, obj, param: str | None = None):
    if not isinstance(obj, dict):
        raise APIError(
            422, f"{param or 'the request body'} must be a JSON object / 须为 JSON 对象", "invalid_schema", param
        )
    try:
        return cls.model_validate(obj)
    except ValidationError as e:
        msg = validation_message(e)
        raise APIError(422, f"{param}: {msg}" if param else msg, "invalid_schema", param) from None


# -------------------------------------------------------------------------------------------- reading
async def _multipart(raw: bytes, headers, limit: int) -> dict:
    try:
        from starlette.formparsers import MultiPartException, MultiPartParser
    except ImportError:  # pragma: no cover - python-multipart comes with gradio
        raise APIError(
            415,
            "multipart uploads need the python-multipart package on the server; send JSON instead",
            "unsupported_media_type",
        ) from None

    async def once():
        yield raw

    try:
        form = await MultiPartParser(headers, once(), max_files=len(FIELDS), max_fields=32, max_part_size=limit).parse()
    except (MultiPartException, AssertionError) as e:
        raise APIError(400, f"malformed multipart form: {e} / 表单格式错误", "invalid_multipart") from None
    obj: dict = {}
    for key, value in form.multi_items():
        if key in obj:
            raise APIError(400, f"form field {key!r} appears twice / 表单字段重复", "invalid_multipart", key)
        if hasattr(value, "read"):  # an uploaded file
            obj[key] = await value.read()
            await value.close()
        elif key in ("aoi", "class_table") and value.strip().startswith("{"):
            try:
                obj[key] = json.loads(value)
            except json.JSONDecodeError as e:
                raise APIError(400, f"{key}: not valid JSON ({e}) / JSON 无效", "invalid_json", key) from None
        else:
            obj[key] = value
    return obj


async def read_request(request, config, cls):
    """(validated body, {field: file bytes}) of a JSON or multipart geo request."""
    from .api import _read_body, check_content_type

    kind = check_content_type(request, multipart=True)  # 415 for text/plain, forms, ...
    raw = await _read_body(request, config.max_body_bytes(), config.body_timeout)
    if kind == "multipart/form-data":
        obj = check_json(await _multipart(raw, request.headers, config.max_body_bytes()))
    else:
        obj = check_json(parse_json(raw))
    if not isinstance(obj, dict):
        raise APIError(422, "the request body must be a JSON object / 请求体须为 JSON 对象", "invalid_schema")
    files = {k: obj.pop(k) for k in FIELDS if isinstance(obj.get(k), bytes)}
    body = _validate(cls, obj)
    for k in FIELDS:
        if getattr(body, k) is not None:
            files[k] = getattr(body, k)
    if len(files) > config.limits.max_images:
        raise APIError(
            400,
            f"{len(files)} rasters, over the limit of {config.limits.max_images} (--max-images) / 图像数量超限",
            "too_many_images",
        )
    return body, files


def _reference(ref: str) -> str:
    """Bare base64 (no ``data:`` prefix) becomes a data URI; anything else is an image reference."""
    s = ref.strip()
    if ":" not in s[:16] and _B64.fullmatch(s[:4096]):
        return "data:application/octet-stream;base64," + s
    return s


async def load_files(files: dict, limits) -> dict[str, bytes]:
    """Checked bytes of every raster (same checks and limits as chat images)."""
    out = {}
    for field_name, value in files.items():
        try:
            if isinstance(value, bytes):
                await run_in_threadpool(check_image, value, limits)
                out[field_name] = value
            else:
                out[field_name] = await run_in_threadpool(fetch_image, _reference(value), limits)
        except ImageRefError as e:
            raise APIError(e.status, f"{field_name}: {e.message}", e.code, field_name) from None
    return out


# ------------------------------------------------------------------------------------------ measuring
def _strip(obj, tmp: Path):
    """Temporary paths → field file names (``image.tif``) in every string of a JSON document."""
    prefix = str(tmp) + "/"
    if isinstance(obj, str):
        return obj.replace(prefix, "")
    if isinstance(obj, dict):
        return {k: _strip(v, tmp) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_strip(v, tmp) for v in obj]
    return obj


def _write_geotiffs(blobs: dict[str, bytes], tmp: Path) -> dict[str, tuple[str, int]]:
    """Write each raster as ``<field>.tif``; (path, band count). Refuses non-TIFFs and TIFFs without a CRS."""
    import warnings

    import rasterio
    from rasterio.errors import NotGeoreferencedWarning

    out = {}
    for name, data in blobs.items():
        kind = image_format(data)
        if kind != "TIFF":
            raise APIError(
                400,
                f"{name}: a {kind} image is not a GeoTIFF; send a georeferenced GeoTIFF "
                f"(data:image/tiff;base64,…) / 不是 GeoTIFF",
                "not_a_geotiff",
                name,
            )
        path = tmp / f"{name}.tif"
        path.write_bytes(data)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            with rasterio.open(path) as ds:
                crs, count = ds.crs, ds.count
        if crs is None:
            raise APIError(
                400,
                f"{name}: the GeoTIFF has no CRS (not georeferenced), so ground areas cannot be measured; "
                "assign one, e.g. gdal_edit.py -a_srs EPSG:32650 FILE / GeoTIFF 没有坐标系，无法量算面积",
                "no_crs",
                name,
            )
        out[name] = (str(path), count)
    return out


def measure_files(opts, blobs: dict[str, bytes], tmp: Path):
    """(Measurement, paths) of the checked rasters with the request's options (runs in a worker thread)."""
    from ..geo.ask import measure_inputs
    from ..geo.crs import CRSInputError
    from ..geo.errors import MeasureError

    if "image" not in blobs and "classes" not in blobs:
        raise APIError(
            400, "give image (a GeoTIFF) and/or classes (a class GeoTIFF) / 缺少影像", "missing_image", "image"
        )
    if "before" in blobs and "image" not in blobs or "before_classes" in blobs and "classes" not in blobs:
        raise APIError(
            400, "before / before_classes need image / classes for the later date / 缺少后时相", "missing_image"
        )
    files = _write_geotiffs(blobs, tmp)
    path = {k: v[0] for k, v in files.items()}
    spec = opts.class_table
    if isinstance(spec, str) and spec.lower() not in BUILTIN_TABLES:
        raise APIError(
            400,
            f"class_table must be one of {', '.join(BUILTIN_TABLES)} or a table object "
            '({"classes": [{"code", "en", "zh"}, …]}) / 类别表无效',
            "invalid_class_table",
            "class_table",
        )
    if isinstance(spec, dict):
        (tmp / "class_table.json").write_text(json.dumps(spec), encoding="utf-8")
        spec = str(tmp / "class_table.json")
    elif spec is None:
        supplied = [p for k, (p, n) in files.items() if k in ("classes", "before_classes") or n == 1]
        spec = auto_class_table(supplied) if supplied else None
    aoi = None
    if opts.aoi is not None:
        (tmp / "aoi.geojson").write_text(json.dumps(opts.aoi), encoding="utf-8")
        aoi = str(tmp / "aoi.geojson")
    try:
        m = measure_inputs(
            path.get("image"),
            path.get("before"),
            path.get("classes"),
            path.get("before_classes"),
            class_table=spec,
            aoi=aoi,
            aoi_crs=opts.aoi_crs,
            bands=opts.bands,
        )
    except CRSInputError as e:
        raise APIError(400, _strip(str(e), tmp), "invalid_crs", "aoi_crs") from None
    except MeasureError as e:
        raise APIError(400, _strip(str(e), tmp), "measure_error") from None
    return m, path


def _grounded(engine, opts, question: str, blobs: dict[str, bytes]):
    """(GroundedPrompt, geovl member) for a question about the rasters (worker thread)."""
    from ..geo.ask import build_grounded
    from ..geo.errors import MeasureError

    if "image" not in blobs:
        raise APIError(
            400, "a grounded question needs image (the GeoTIFF the model looks at) / 缺少影像", "missing_image", "image"
        )
    with tempfile.TemporaryDirectory(prefix="geovl-geo-") as d:
        tmp = Path(d)
        m, path = measure_files(opts, blobs, tmp)
        try:
            gp = build_grounded(
                path["image"],
                question,
                before_path=path.get("before"),
                bands=opts.bands,
                lang=opts.lang,
                preprocess=input_spec(engine).preprocess,
                measurement=m,
            )
        except MeasureError as e:
            raise APIError(400, _strip(str(e), tmp), "measure_error") from None
        member = {
            "grounded": True,
            "measurement": _strip(m.to_json(), tmp),
            "context": _strip(gp.context, tmp),
            "prompt": _strip(gp.prompt, tmp),
            "question": gp.question,
            "lang": gp.lang,
        }
    return gp, member


async def ground_chat(geo_obj, parsed, images: list[bytes], engine, config):
    """The ``"geovl"`` extension of chat completions: (ChatRequest, geovl member), or (None, None)
    when ``grounded`` is false (the request is then answered as usual)."""
    opts = _validate(ChatGeo, geo_obj, "geovl")
    if not opts.grounded:
        return None, None
    msgs = parsed.messages
    last = max(i for i, m in enumerate(msgs) if m["role"] == "user")
    n_img = [sum(1 for p in m["content"] if p.get("type") == "image") for m in msgs]
    k, start = n_img[last], sum(n_img[:last])
    if k not in (1, 2):
        raise APIError(
            400,
            f"geovl.grounded: the last user message must carry one GeoTIFF (or two: before, then after); "
            f"it has {k} image(s) / 最后一条用户消息须包含一幅或两幅 GeoTIFF",
            "invalid_geovl",
            "geovl",
        )
    question = "".join(p.get("text") or "" for p in msgs[last]["content"] if p.get("type") == "text").strip()
    if not question:
        raise APIError(
            400, "geovl.grounded: the last user message has no question text / 缺少问题", "invalid_geovl", "geovl"
        )
    blobs = dict(zip(("image",) if k == 1 else ("before", "image"), images[start : start + k]))
    refs = opts.classes or []
    if refs and len(refs) != k:
        raise APIError(
            400,
            f"geovl.classes: {len(refs)} class raster(s) for {k} date(s); give one per date (before, then after)",
            "invalid_geovl",
            "geovl",
        )
    blobs |= await load_files(dict(zip(("classes",) if k == 1 else ("before_classes", "classes"), refs)), config.limits)
    gp, member = await run_in_threadpool(_grounded, engine, opts, question, blobs)
    return gp.request(), member


# ------------------------------------------------------------------------------------------------ routes
def add_geo_routes(app, engine, config, batcher, check_key) -> None:
    from .api import answer, check_prompt, check_text_size

    @app.post("/v1/geo/measure")
    async def geo_measure(request: Request):
        check_key(request)
        body, files = await read_request(request, config, MeasureBody)
        blobs = await load_files(files, config.limits)

        def work():
            with tempfile.TemporaryDirectory(prefix="geovl-geo-") as d:
                tmp = Path(d)
                m, _ = measure_files(body, blobs, tmp)
                lang = body.lang or "zh"
                gj = m.geojson(wgs84=True) if body.geojson and m.change is not None else None
                return {
                    "object": "geovl.measurement",
                    "measurement": _strip(m.to_json(), tmp),
                    "context": _strip(m.context_text(lang), tmp),
                    "lang": lang,
                    "geojson": _strip(gj, tmp) if gj else None,
                }

        return await run_in_threadpool(work)

    @app.post("/v1/geo/ask")
    async def geo_ask(request: Request):
        check_key(request)
        body, files = await read_request(request, config, AskBody)
        if body.model and body.model != config.served_model_name:
            raise APIError(
                404,
                f"model {body.model!r} is not served here; this server serves {config.served_model_name!r} / 模型不存在",
                "model_not_found",
                "model",
            )
        try:
            params = generation_params(body, config.max_tokens_limit, config.default_max_tokens)
        except EngineError as e:
            raise APIError(400, str(e), "invalid_parameter") from None
        check_text_size([{"content": [{"text": body.question}]}], config)  # before any raster is read or text tokenized
        blobs = await load_files(files, config.limits)
        gp, member = await run_in_threadpool(_grounded, engine, body, body.question, blobs)
        req = gp.request()
        params = await check_prompt(
            engine, req, params, config, (body.max_completion_tokens or body.max_tokens) is not None
        )
        return await answer(
            batcher,
            req,
            params,
            lambda text, usage: {
                "id": "geoask-" + uuid.uuid4().hex[:24],
                "object": "geovl.grounded_answer",
                "created": int(time.time()),
                "model": config.served_model_name,
                "answer": text.strip(),
                **{k: v for k, v in member.items() if k != "grounded"},
                "usage": usage_dict(usage),
                "finish_reason": (usage or {}).get("finish_reason", "stop"),
            },
            request,
        )
