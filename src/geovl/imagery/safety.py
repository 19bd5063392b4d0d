"""Image safety: the one place that decides whether image bytes or an image reference may be read.

- **Formats** (:data:`MAGICS`, :func:`image_format`): the one table of file signatures — PNG, JPEG,
  GIF, BMP, WebP, TIFF/BigTIFF (both byte orders), JPEG2000 (JP2 file and raw codestream).
- **Sizes before decoding** (decompression and band bombs): :func:`read_header` reads what a file
  declares without decoding pixel data — for TIFF it walks the directory chain itself (pages,
  GeoTIFF overviews and masks, SubIFDs), for JPEG2000 the SIZ marker — and :func:`check_size`
  refuses more pixels or more decoded bytes (bands × pixels × bytes per sample over every image in
  the file) than allowed. Every path calls it: ``data convert`` and the CLI through
  :func:`geovl.imagery.decode.load_image`, the API/web app/geo routes through :func:`check_image`.
- **PIL's own guard** stays armed for the whole process, never ``None``: importing geovl sets
  ``PIL.Image.MAX_IMAGE_PIXELS`` to :data:`PIL_MAX_IMAGE_PIXELS` = :data:`DEFAULT_MAX_DECODED_BYTES`
  / 8, so PIL (which warns above that many pixels and refuses above twice it) refuses any image
  whose 4-byte-per-pixel decode would exceed our decoded-bytes limit, in any library of the process.
  Our checks run first with clear reasons; PIL's is the backstop.
- **Paths**: :func:`resolve_image_path` keeps dataset image paths inside an images root.
- **References a client sends** (OpenAI ``image_url`` parts, web-app uploads), under :class:`ImageLimits`:

  - ``data:<mime>;base64,<data>`` — always accepted; the encoded length is checked before decoding;
  - ``http://`` / ``https://`` — only when :attr:`ImageLimits.allow_http` is set; fetched with a
    total time limit per download (not per read), a byte limit (``Content-Length`` and the bytes
    actually read) and a redirect limit;
  - ``file://`` URLs and plain paths — only when :attr:`ImageLimits.allowed_dir` is set. Paths with a
    ``..`` component are refused outright; the path is resolved (following symlinks) and must stay
    inside the allowed folder; the file is opened with ``O_NOFOLLOW`` and the opened descriptor is
    checked again (``/proc/self/fd``) so a symlink swapped in between cannot lead outside.

  :func:`check_image` then checks byte size, a known format, the header sizes, then one full decode
  (corrupt or truncated data). The bytes reach the engine unchanged.

**Errors**: one family under :class:`geovl.errors.GeoVLError` — :class:`ImageError` (``reason`` slug),
:class:`ImageTooLarge` (a size limit, with the header read) and :class:`ImageRefError` (a refused
client image: ``code`` slug, HTTP ``status``, bilingual message).
"""

from __future__ import annotations

import base64
import binascii
import io
import os
import re
import stat
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote, urlparse

from PIL import Image

from ..errors import GeoVLError

DEFAULT_MAX_PIXELS = 64_000_000  # ~8000x8000; larger images are rejected, not decoded
DEFAULT_MAX_DECODED_BYTES = 512 * 1024 * 1024  # bands x pixels x bytes per sample, all images of a file
WHOLE_RASTER_MAX_DECODED_BYTES = 4 * 1024**3  # readers that load a whole raster for measuring (geovl measure)
MAX_TIFF_IMAGES = 1024  # IFDs (pages, overviews, masks) read from one TIFF header


# The one table of file signatures: (prefix, format). WebP is RIFF....WEBP (see image_format).
MAGICS: tuple[tuple[bytes, str], ...] = (
    (b"\x89PNG\r\n\x1a\n", "PNG"),
    (b"\xff\xd8\xff", "JPEG"),
    (b"GIF87a", "GIF"),
    (b"GIF89a", "GIF"),
    (b"BM", "BMP"),
    (b"II*\x00", "TIFF"),  # classic TIFF, little- and big-endian
    (b"MM\x00*", "TIFF"),
    (b"II+\x00", "TIFF"),  # BigTIFF
    (b"MM\x00+", "TIFF"),
    (b"\x00\x00\x00\x0cjP  \r\n\x87\n", "JPEG2000"),  # JP2 file
    (b"\xff\x4f\xff\x51", "JPEG2000"),  # raw J2K codestream (SOC + SIZ)
)
TIFF_MAGICS = tuple(m for m, f in MAGICS if f == "TIFF")
JP2_MAGICS = tuple(m for m, f in MAGICS if f == "JPEG2000")
J2K_SIZ = b"\xff\x4f\xff\x51"
FORMATS = {m: f for m, f in MAGICS if f not in ("TIFF", "JPEG2000")}  # the plain pictures PIL decodes

# PIL's decompression-bomb guard, armed for the whole process (see the module docstring).
PIL_MAX_IMAGE_PIXELS = DEFAULT_MAX_DECODED_BYTES // 8
Image.MAX_IMAGE_PIXELS = PIL_MAX_IMAGE_PIXELS
SERVER_MAX_DECODED_BYTES = 256 * 1024 * 1024  # per image on the server (bands x pixels x bytes per sample)
DATA_URI = re.compile(
    r"^data:(?P<mime>[\w.+-]+/[\w.+-]+)?(?P<params>(;[\w.+-]+=[^;,]*)*)(?P<b64>;base64)?,", re.IGNORECASE
)


def image_format(data: bytes) -> str | None:
    """The format named by the first bytes (:data:`MAGICS`), or None."""
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    return next((fmt for magic, fmt in MAGICS if data.startswith(magic)), None)


class ImageError(GeoVLError):
    """An image geovl refuses or cannot read. ``reason`` is a stable slug (the rejects-file reason of
    ``data convert``, the ``code`` of an API error), ``detail`` says what is wrong, naming the file."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


class ImageTooLarge(ImageError):
    """An image over a size limit (reason ``image_too_large``); ``limit`` is ``"pixels"`` or
    ``"decoded_bytes"``, ``header`` the :class:`ImageHeader` that was read."""

    def __init__(self, detail: str, limit: str, header: "ImageHeader", maximum: int):
        super().__init__("image_too_large", detail)
        self.limit, self.header, self.maximum = limit, header, maximum


@dataclass
class ImageHeader:
    """What an image file declares, read without decoding pixel data."""

    format: str  # TIFF, PNG, JPEG, ...
    width: int  # of the first (full-resolution) image
    height: int
    bands: int  # of the first image
    bytes_per_sample: int  # of the first image
    decoded_bytes: int  # bands x pixels x bytes per sample, summed over every image in the file
    images: int = 1  # TIFF: IFDs (pages, overviews, masks, SubIFDs)

    @property
    def pixels(self) -> int:
        return self.width * self.height


class ImageRefError(ImageError):
    """A refused image reference or image sent to the server (API, web app): ``code`` (= ``reason``)
    is a stable slug, ``status`` the HTTP status to answer with, the message is bilingual."""

    def __init__(self, message: str, code: str, status: int = 400):
        ImageError.__init__(self, code, message)
        self.args = (message,)  # str(e) and e.message: the message alone
        self.code, self.status = code, status


def resolve_image_path(root: str | os.PathLike, ref: str) -> Path:
    """``root/ref`` if it stays inside ``root``; raise ``ImageError('path_escape')`` otherwise."""
    if not isinstance(ref, str) or not ref.strip():
        raise ImageError("missing_image", "empty image path")
    ref = ref.strip().replace("\\", "/")
    if os.path.isabs(ref) or ref.startswith("~"):
        raise ImageError(
            "path_escape", f"absolute image path {ref!r} not allowed (paths are relative to the images root)"
        )
    root_r = Path(root).resolve()
    p = (root_r / ref).resolve()
    if p != root_r and root_r not in p.parents:
        raise ImageError("path_escape", f"{ref!r} resolves outside the images root {root_r}")
    return p


# -- header sizes ---------------------------------------------------------------------------------
_TIFF_TYPE_SIZE = {
    1: 1,
    2: 1,
    3: 2,
    4: 4,
    5: 8,
    6: 1,
    7: 1,
    8: 2,
    9: 4,
    10: 8,
    11: 4,
    12: 8,
    13: 4,
    16: 8,
    17: 8,
    18: 8,
}
_TIFF_WIDTH, _TIFF_LENGTH, _TIFF_BITS, _TIFF_SPP, _TIFF_SUBIFDS = 256, 257, 258, 277, 330


def _tiff_images(read, name: str) -> list[tuple[int, int, int, int]]:
    """(width, height, samples per pixel, bytes per sample) of every IFD of a TIFF — the main chain
    (pages, GDAL's overviews and masks) and SubIFDs — from the directory entries only.
    ``read(offset, n)`` returns up to ``n`` bytes of the file."""
    import struct

    head = read(0, 16)
    if len(head) < 8 or head[:2] not in (b"II", b"MM"):
        raise ImageError("undecodable_image", f"{name}: not a TIFF header")
    e = "<" if head[:2] == b"II" else ">"
    magic = struct.unpack(e + "H", head[2:4])[0]
    big = magic == 43
    if magic not in (42, 43) or (big and len(head) < 16):
        raise ImageError("undecodable_image", f"{name}: bad TIFF magic")
    first = struct.unpack(e + "Q", head[8:16])[0] if big else struct.unpack(e + "I", head[4:8])[0]
    cnt_fmt, cnt_size, ent_size, off_fmt, off_size = ("Q", 8, 20, "Q", 8) if big else ("H", 2, 12, "I", 4)
    out: list[tuple[int, int, int, int]] = []
    todo, seen = [first], set()
    while todo:
        off = todo.pop(0)
        if off == 0 or off in seen:
            continue
        if len(seen) >= MAX_TIFF_IMAGES:
            raise ImageError("image_too_large", f"{name}: more than {MAX_TIFF_IMAGES} images (IFDs) in one TIFF")
        seen.add(off)
        raw = read(off, cnt_size)
        if len(raw) < cnt_size:
            raise ImageError(
                "undecodable_image", f"{name}: TIFF directory at offset {off} lies past the end of the file"
            )
        n = struct.unpack(e + cnt_fmt, raw)[0]
        if n > 4096:
            raise ImageError("undecodable_image", f"{name}: TIFF directory with {n} entries")
        body = read(off + cnt_size, n * ent_size + off_size)
        if len(body) < n * ent_size + off_size:
            raise ImageError("undecodable_image", f"{name}: truncated TIFF directory at offset {off}")
        tags: dict[int, list[int]] = {}
        for i in range(n):
            ent = body[i * ent_size : (i + 1) * ent_size]
            tag, typ = struct.unpack(e + "HH", ent[:4])
            count = struct.unpack(e + off_fmt, ent[4 : 4 + off_size])[0]
            if tag not in (_TIFF_WIDTH, _TIFF_LENGTH, _TIFF_BITS, _TIFF_SPP, _TIFF_SUBIFDS) or typ not in (
                3,
                4,
                13,
                16,
                18,
            ):
                continue
            size = _TIFF_TYPE_SIZE[typ]
            fmt = {2: "H", 4: "I", 8: "Q"}[size]
            count = min(int(count), 65536)
            if count * size <= off_size:
                blob = ent[4 + off_size : 4 + off_size + count * size]
            else:
                where = struct.unpack(e + off_fmt, ent[4 + off_size : 4 + 2 * off_size])[0]
                blob = read(where, count * size)
                if len(blob) < count * size:
                    raise ImageError("undecodable_image", f"{name}: TIFF tag {tag} points past the end of the file")
            tags[tag] = list(struct.unpack(e + fmt * count, blob)) if count else []
        nxt = struct.unpack(e + off_fmt, body[n * ent_size : n * ent_size + off_size])[0]
        todo.append(nxt)
        todo.extend(tags.get(_TIFF_SUBIFDS, []))
        w, h = (tags.get(_TIFF_WIDTH) or [0])[0], (tags.get(_TIFF_LENGTH) or [0])[0]
        spp = (tags.get(_TIFF_SPP) or [1])[0]
        bits = max(tags.get(_TIFF_BITS) or [1])
        out.append((int(w), int(h), max(1, int(spp)), max(1, (int(bits) + 7) // 8)))
    if not out:
        raise ImageError("undecodable_image", f"{name}: TIFF without images")
    return out


_PIL_SAMPLE_BYTES = {"I": 4, "F": 4, "I;16": 2, "I;16B": 2, "I;16L": 2, "I;16N": 2}


def read_header(source, name: str | None = None) -> ImageHeader:
    """The :class:`ImageHeader` of encoded bytes or of a file path — never decodes pixel data."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
        name = name or "<bytes>"

        def read(off: int, n: int) -> bytes:
            return data[off : off + n]

        if data[:4] in TIFF_MAGICS:
            return _tiff_header(read, name)
        if data.startswith(JP2_MAGICS):
            return _j2k_header(data[: 1 << 20], name)
        opener = lambda: io.BytesIO(data)  # noqa: E731
    else:
        path = Path(source)
        name = name or str(path)
        with open(path, "rb") as f:
            if f.read(4) in TIFF_MAGICS:

                def read(off: int, n: int) -> bytes:
                    f.seek(off)
                    return f.read(n)

                return _tiff_header(read, name)
            f.seek(0)
            head = f.read(1 << 20)
        if head.startswith(JP2_MAGICS):
            return _j2k_header(head, name)
        opener = lambda: open(path, "rb")  # noqa: E731
    try:
        with opener() as fh, _open_header(fh, name) as img:  # reads the header only
            w, h = img.size
            bands = len(img.getbands())
            per = _PIL_SAMPLE_BYTES.get(img.mode, 1)
            fmt = img.format or "image"
    except ImageError:
        raise
    except Exception as e:  # noqa: BLE001 - PIL raises many types for bad headers
        raise ImageError("undecodable_image", f"{name}: {e}") from None
    return ImageHeader(fmt, w, h, bands, per, w * h * bands * per)


def _j2k_header(head: bytes, name: str) -> ImageHeader:
    """JPEG2000 sizes from the codestream's SIZ marker (image and tile origin, components and their
    bit depths), found in the first MiB of a JP2 file or at the start of a J2K codestream. Pillow's
    header guess counts a 4-band 16-bit JP2 as 8-bit, so the decoded size is read here instead."""
    import struct

    at = head.find(J2K_SIZ)
    if at < 0 or len(head) < at + 42:
        raise ImageError("undecodable_image", f"{name}: JPEG2000 without a SIZ marker in its first MiB")
    xsiz, ysiz, xo, yo = struct.unpack_from(">IIII", head, at + 8)
    (csiz,) = struct.unpack_from(">H", head, at + 40)
    comps = head[at + 42 : at + 42 + 3 * csiz]
    if csiz < 1 or len(comps) < 3 * csiz or xsiz <= xo or ysiz <= yo:
        raise ImageError("undecodable_image", f"{name}: malformed JPEG2000 SIZ marker")
    w, h = xsiz - xo, ysiz - yo
    per = max(((comps[3 * i] & 0x7F) + 1 + 7) // 8 for i in range(csiz))
    per = 1 if per <= 1 else 2 if per <= 2 else 4
    return ImageHeader("JPEG2000", w, h, csiz, per, w * h * csiz * per)


def _open_header(fh, name: str):
    """The PIL image object of a file's header, like ``Image.open`` but without PIL's decompression
    bomb guard, so that :func:`check_size` can name the declared size (nothing is decoded here)."""
    Image.init()
    prefix = fh.read(16)
    for fid in Image.ID:
        factory, accept = Image.OPEN[fid]
        if accept is not None and not accept(prefix):
            continue
        fh.seek(0)
        try:
            return factory(fh, "")
        except (SyntaxError, IndexError, TypeError, ValueError, OSError, EOFError):
            continue
    raise ImageError("undecodable_image", f"{name}: not an image PIL can read")


def _tiff_header(read, name: str) -> ImageHeader:
    ims = _tiff_images(read, name)
    w, h, spp, per = ims[0]
    total = sum(a * b * c * d for a, b, c, d in ims)
    return ImageHeader("TIFF", w, h, spp, per, total, len(ims))


def check_size(
    header: ImageHeader,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_decoded_bytes: int = DEFAULT_MAX_DECODED_BYTES,
    name: str = "<image>",
) -> ImageHeader:
    """Refuse an image whose header declares more pixels or more decoded bytes than allowed
    (:class:`ImageTooLarge`, reason ``image_too_large``); zero-size images are ``undecodable_image``."""
    w, h = header.width, header.height
    if w <= 0 or h <= 0:
        raise ImageError("undecodable_image", f"{name}: zero-size image")
    if w * h > max_pixels:
        raise ImageTooLarge(f"{name}: {w}x{h} = {w * h} px > limit {max_pixels}", "pixels", header, max_pixels)
    if header.decoded_bytes > max_decoded_bytes:
        what = f"{header.bands} band(s) x {w}x{h} px x {header.bytes_per_sample} byte(s)"
        if header.images > 1:
            what += f", {header.images} images (pages/overviews) in all"
        raise ImageTooLarge(
            f"{name}: decodes to {header.decoded_bytes} bytes ({what}) > limit {max_decoded_bytes} bytes",
            "decoded_bytes",
            header,
            max_decoded_bytes,
        )
    return header


def _check_pixels(
    source, max_pixels: int, name: str, max_decoded_bytes: int = DEFAULT_MAX_DECODED_BYTES
) -> ImageHeader:
    return check_size(read_header(source, name), max_pixels, max_decoded_bytes, name)


# -- references a client sends (API, web app) ---------------------------------------------------
@dataclass
class ImageLimits:
    max_image_bytes: int = 20 * 1024 * 1024
    max_pixels: int = 25_000_000  # 5000x5000; checked from the header before decoding
    max_images: int = 8  # per request (all turns)
    max_decoded_bytes: int = SERVER_MAX_DECODED_BYTES  # per image, all bands/pages/overviews, from the header
    max_request_decoded_bytes: int = 2 * SERVER_MAX_DECODED_BYTES  # all images of one request together
    allow_http: bool = False
    allowed_dir: str | None = None
    http_timeout: float = 10.0  # seconds per http(s) download in all (not per read)
    max_redirects: int = 3
    _given_dir: str | None = field(default=None, init=False, repr=False)

    def __post_init__(self):
        for name in ("max_image_bytes", "max_pixels", "max_images", "max_decoded_bytes", "max_request_decoded_bytes"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.allowed_dir is not None:
            root = Path(self.allowed_dir)
            if not root.is_dir():
                raise ValueError(f"allowed image folder {self.allowed_dir} does not exist or is not a folder")
            self._given_dir = os.path.abspath(root)
            self.allowed_dir = str(root.resolve())


def _mb(n: int) -> str:
    return f"{n / 1024 / 1024:.1f} MiB"


# Words of the reference kinds (the same loaders read images and videos: geovl.serve.videos).
KIND_WORDS = {"image": ("image", "图像"), "video": ("video", "视频")}
TOO_BIG_CODES = {"image": "image_too_large", "video": "video_too_many_bytes"}


def _cap(limits: ImageLimits, max_bytes: int | None) -> int:
    return limits.max_image_bytes if max_bytes is None else int(max_bytes)


def _too_big(
    n: int, limits: ImageLimits, what: str | None = None, max_bytes: int | None = None, kind: str = "image"
) -> ImageRefError:
    cap, (word, zh) = _cap(limits, max_bytes), KIND_WORDS[kind]
    return ImageRefError(
        f"{what or word} is {n} bytes, over the limit of {cap} bytes ({_mb(cap)}) / {zh}文件过大",
        TOO_BIG_CODES[kind],
        413,
    )


# -- the reference kinds -------------------------------------------------------------------------
def decode_data_uri(url: str, limits: ImageLimits, max_bytes: int | None = None, kind: str = "image") -> bytes:
    m = DATA_URI.match(url)
    if not m:
        raise ImageRefError(
            "malformed data URI: expected data:<mime>;base64,<data> / data URI 格式错误", "invalid_data_uri"
        )
    if not m.group("b64"):
        raise ImageRefError(
            "data URIs must be base64-encoded (data:<mime>;base64,...) / data URI 需为 base64 编码", "invalid_data_uri"
        )
    payload = url[m.end() :]
    if len(payload) > (_cap(limits, max_bytes) + 2) // 3 * 4 + 4:  # before decoding anything
        raise _too_big(len(payload) * 3 // 4, limits, None, max_bytes, kind)
    payload = re.sub(r"\s+", "", payload)
    try:
        return base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError) as e:
        raise ImageRefError(f"malformed base64 in data URI ({e}) / base64 数据无效", "invalid_base64") from None


def fetch_http(url: str, limits: ImageLimits, max_bytes: int | None = None, kind: str = "image") -> bytes:
    """Download an http(s) image (or video: ``kind``, ``max_bytes``) within ``limits.http_timeout`` seconds *in all* (connecting,
    redirects and every byte): a sender that trickles bytes cannot hold a worker past the deadline."""
    import asyncio

    import httpx

    cap, (word, zh) = _cap(limits, max_bytes), KIND_WORDS[kind]
    if not limits.allow_http:
        raise ImageRefError(
            f"http(s) {word} URLs are disabled on this server (start it with --allow-http-images); send the {word} as a "
            f"data: URI instead / 服务器未开启网络{zh}下载，请使用 data: URI",
            f"http_{word}s_disabled",
        )

    async def download() -> bytes:
        async with httpx.AsyncClient(
            timeout=limits.http_timeout, follow_redirects=True, max_redirects=limits.max_redirects
        ) as client:
            async with client.stream("GET", url) as r:
                if r.status_code != 200:
                    raise ImageRefError(
                        f"fetching {url} answered HTTP {r.status_code} / {zh}下载失败", f"{word}_fetch_failed"
                    )
                declared = r.headers.get("content-length")
                if declared and declared.isdigit() and int(declared) > cap:
                    raise _too_big(int(declared), limits, f"{url}", max_bytes, kind)
                buf = bytearray()
                async for chunk in r.aiter_bytes():
                    buf += chunk
                    if len(buf) > cap:
                        raise _too_big(len(buf), limits, f"{url} (read so far)", max_bytes, kind)
                return bytes(buf)

    try:
        return asyncio.run(asyncio.wait_for(download(), limits.http_timeout))  # runs in a worker thread
    except (httpx.TimeoutException, asyncio.TimeoutError):
        raise ImageRefError(
            f"fetching {url} took longer than {limits.http_timeout:g} s in all / {zh}下载超时", f"{word}_fetch_timeout"
        ) from None
    except httpx.HTTPError as e:
        raise ImageRefError(
            f"cannot fetch {url}: {type(e).__name__}: {e} / {zh}下载失败", f"{word}_fetch_failed"
        ) from None


def _inside(path: Path, root: Path) -> bool:
    return path == root or root in path.parents


def resolve_local(ref: str, limits: ImageLimits, kind: str = "image") -> Path:
    """The real path of a ``file://`` URL or plain path, if it lies inside the allowed folder."""
    word, zh = KIND_WORDS[kind]
    if limits.allowed_dir is None:
        raise ImageRefError(
            f"local {word} paths and file:// URLs are disabled on this server (start it with --allowed-image-dir DIR); "
            f"send the {word} as a data: URI instead / 服务器未开启本地{zh}路径",
            f"local_{word}s_disabled",
        )
    if ref.lower().startswith("file:"):
        u = urlparse(ref)
        if u.netloc not in ("", "localhost"):
            raise ImageRefError(
                f"file:// URL with a remote host {u.netloc!r} / 不支持远程主机的 file:// 地址", "path_not_allowed", 403
            )
        ref = unquote(u.path)
    if not ref or "\x00" in ref:
        raise ImageRefError(f"empty or invalid {word} path / {zh}路径无效", f"invalid_{word}_url")
    parts = ref.replace("\\", "/").split("/")
    if ".." in parts:
        raise ImageRefError(
            f"{word} path {ref!r} contains '..'; paths must stay inside the allowed folder / 路径不允许包含 ..",
            "path_not_allowed",
            403,
        )
    if ref.startswith("~"):
        raise ImageRefError(f"{word} path {ref!r}: '~' is not expanded / 不支持 ~ 路径", "path_not_allowed", 403)
    root = Path(limits.allowed_dir)
    candidate = Path(ref) if os.path.isabs(ref) else root / ref
    # lexical check first (no file-system access for paths that name something outside)
    lexical = Path(os.path.normpath(candidate))
    if not _inside(lexical, root) and not _inside(lexical, Path(limits._given_dir or root)):
        raise ImageRefError(
            f"{word} path {ref!r} is outside the allowed folder / 路径超出允许的目录", "path_not_allowed", 403
        )
    real = candidate.resolve()  # follows symlinks (reads link targets, opens nothing)
    if not _inside(real, root):
        raise ImageRefError(
            f"{word} path {ref!r} leads outside the allowed folder (symlink) / 符号链接指向允许目录之外",
            "path_not_allowed",
            403,
        )
    return real


def read_local(ref: str, limits: ImageLimits, max_bytes: int | None = None, kind: str = "image") -> bytes:
    real = resolve_local(ref, limits, kind)
    cap, (word, zh) = _cap(limits, max_bytes), KIND_WORDS[kind]
    root = Path(limits.allowed_dir)
    try:
        fd = os.open(real, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0))
    except FileNotFoundError:
        raise ImageRefError(
            f"{word} {ref!r} not found in the allowed folder / {zh}不存在", f"{word}_not_found", 404
        ) from None
    except OSError as e:
        raise ImageRefError(
            f"cannot open {word} {ref!r}: {e.strerror} / 无法打开{zh}", f"{word}_unreadable", 403
        ) from None
    try:
        opened = Path(f"/proc/self/fd/{fd}")
        if opened.exists() and not _inside(Path(os.readlink(opened)), root):  # swapped between resolve and open
            raise ImageRefError(
                f"{word} path {ref!r} changed to point outside the allowed folder / 路径超出允许的目录",
                "path_not_allowed",
                403,
            )
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ImageRefError(f"{word} path {ref!r} is not a regular file / 不是普通文件", f"invalid_{word}_url")
        if st.st_size > cap:
            raise _too_big(st.st_size, limits, f"{word} {ref!r}", max_bytes, kind)
        with os.fdopen(fd, "rb", closefd=True) as f:
            fd = -1
            data = f.read(cap + 1)
        if len(data) > cap:
            raise _too_big(len(data), limits, f"{word} {ref!r}", max_bytes, kind)
        return data
    finally:
        if fd >= 0:
            os.close(fd)


def load_reference(url: str, limits: ImageLimits, max_bytes: int | None = None, kind: str = "image") -> bytes:
    """Raw bytes of one image reference (not yet checked as an image). ``kind="video"`` reads a video
    reference under the same rules (data URI, http(s) only when allowed, local files only inside the
    allowed folder) with its own byte limit ``max_bytes`` (:mod:`geovl.serve.videos`)."""
    word, zh = KIND_WORDS[kind]
    if not isinstance(url, str) or not url.strip():
        raise ImageRefError(f"{word}_url.url must be a non-empty string / {zh}地址为空", f"invalid_{word}_url")
    url = url.strip()
    low = url[:16].lower()
    if low.startswith("data:"):
        data = decode_data_uri(url, limits, max_bytes, kind)
    elif low.startswith(("http://", "https://")):
        data = fetch_http(url, limits, max_bytes, kind)
    elif re.match(r"^[a-z][a-z0-9+.-]*://", low) and not low.startswith("file://"):
        raise ImageRefError(
            f"unsupported URL scheme in {url[:40]!r}: use data:, http(s): or file: / 不支持的地址类型",
            f"invalid_{word}_url",
        )
    else:
        data = read_local(url, limits, max_bytes, kind)
    if len(data) > _cap(limits, max_bytes):
        raise _too_big(len(data), limits, None, max_bytes, kind)
    return data


# -- checking the bytes ---------------------------------------------------------------------------
def _too_large(e: ImageTooLarge) -> ImageRefError:
    h = e.header
    if e.limit == "pixels":
        return ImageRefError(
            f"image is {h.width}x{h.height} = {h.pixels} pixels, over the limit of {e.maximum} pixels (checked before decoding) / 图像像素数超限",
            "image_too_many_pixels",
            413,
        )
    what = f"{h.bands} band(s) × {h.width}x{h.height} pixels × {h.bytes_per_sample} byte(s)"
    if h.images > 1:
        what += f", {h.images} images (pages/overviews) in all"
    return ImageRefError(
        f"image decodes to {h.decoded_bytes} bytes ({what}), over the limit of {e.maximum} bytes ({_mb(e.maximum)}, "
        "--max-decoded-bytes; checked before decoding) / 图像解码后体积超限（波段数 × 像素 × 字节）",
        "image_too_large_decoded",
        413,
    )


def check_header(data: bytes, limits: ImageLimits):
    """The image's :class:`~geovl.imagery.decode.ImageHeader` if its declared sizes are within the
    limits (pixels, decoded bytes); raises :class:`ImageRefError` otherwise. Decodes nothing."""
    try:
        return check_size(read_header(data, "image"), limits.max_pixels, limits.max_decoded_bytes, "image")
    except ImageTooLarge as e:
        raise _too_large(e) from None
    except ImageError as e:
        raise ImageRefError(
            f"cannot read the image header: {e.detail[:200]} / 图像头无法解析", "invalid_image"
        ) from None


def check_request_images(images: list[bytes], limits: ImageLimits) -> None:
    """All images of one request together decode to at most ``limits.max_request_decoded_bytes``
    (each one is already within the per-image limit); read from the headers, decodes nothing."""
    total = sum(read_header(data, "image").decoded_bytes for data in images)
    if total > limits.max_request_decoded_bytes:
        raise ImageRefError(
            f"the request's {len(images)} images decode to {total} bytes together, over the limit of "
            f"{limits.max_request_decoded_bytes} bytes ({_mb(limits.max_request_decoded_bytes)}, --max-request-decoded-bytes; "
            "checked before decoding) / 请求中全部图像解码后总体积超限",
            "images_too_large_decoded",
            413,
        )


def check_image(data: bytes, limits: ImageLimits) -> tuple[int, int]:
    """(width, height) of valid image bytes; raises :class:`ImageRefError` otherwise."""
    from PIL import Image

    if not data:
        raise ImageRefError("image data is empty / 图像数据为空", "invalid_image")
    if len(data) > limits.max_image_bytes:
        raise _too_big(len(data), limits)
    fmt = image_format(data)
    if fmt is None:
        raise ImageRefError(
            "the data is not a PNG, JPEG, WebP, GIF, BMP, TIFF or JPEG2000 image / 不是受支持的图像格式",
            "invalid_image",
        )
    header = check_header(data, limits)  # pixels and decoded bytes, before GDAL or PIL decode anything
    if fmt in ("TIFF", "JPEG2000"):  # rasters: GDAL, as the one render path reads them
        from rasterio.io import MemoryFile

        try:
            with MemoryFile(bytes(data)) as mf, mf.open() as src:
                w, h = src.width, src.height
                if w * h * src.count > header.pixels * header.bands:  # GDAL may never see more than was checked
                    raise ImageRefError(
                        f"{fmt} header says {header.width}x{header.height}x{header.bands} but GDAL reads "
                        f"{w}x{h}x{src.count} / {fmt} 头信息不一致",
                        "invalid_image",
                    )
                src.read(1, window=((0, min(h, 1)), (0, min(w, 1))))
        except ImageRefError:
            raise
        except Exception as e:  # noqa: BLE001 - rasterio raises many types
            raise ImageRefError(f"unreadable {fmt}: {str(e)[:200]} / {fmt} 无法读取", "invalid_image") from None
        return w, h
    try:
        im = Image.open(io.BytesIO(data))  # reads the header only
        w, h = im.size
    except Exception as e:  # noqa: BLE001
        raise ImageRefError(f"cannot read the {fmt} header: {str(e)[:200]} / 图像头无法解析", "invalid_image") from None
    try:
        im.load()
    except Exception as e:  # noqa: BLE001 - truncated or corrupt data
        raise ImageRefError(
            f"corrupt or truncated {fmt} data: {str(e)[:200]} / 图像数据损坏", "invalid_image"
        ) from None
    finally:
        im.close()
    return w, h


def fetch_image(url: str, limits: ImageLimits) -> bytes:
    """Bytes of a checked image from an ``image_url`` reference."""
    data = load_reference(url, limits)
    check_image(data, limits)
    return data
