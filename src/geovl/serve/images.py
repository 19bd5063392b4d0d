"""Safe handling of the images a client sends (OpenAI ``image_url`` parts, web-app uploads).

An image reference is one of:

- ``data:<mime>;base64,<data>`` — always accepted; the encoded length is checked before decoding;
- ``http://`` / ``https://`` — only when :attr:`ImageLimits.allow_http` is set; fetched with a
  total time limit per download (not per read), a byte limit (``Content-Length`` and the bytes actually read) and a redirect limit;
- ``file://`` URLs and plain paths — only when :attr:`ImageLimits.allowed_dir` is set. Paths with a
  ``..`` component are refused outright; the path is resolved (following symlinks) and must stay
  inside the allowed folder; the file is opened with ``O_NOFOLLOW`` and the opened descriptor is
  checked again (``/proc/self/fd``) so a symlink swapped in between cannot lead outside. Nothing
  outside the folder is ever opened.

Every image is then checked by :func:`check_image`: byte size, a known format, then the size
checks of the one image-safety module, :func:`geovl.imagery.decode.check_size` — pixel count and
decoded bytes (bands × pixels × bytes per sample over every TIFF page/overview), read from the
header *before* any decoding (decompression and band bombs) — then one full decode (corrupt or
truncated data). The bytes reach the engine unchanged, so the API does not alter what a local
engine would see. Problems raise :class:`ImageRefError` (HTTP status, code, bilingual message).
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

from ..errors import GeoVLError
from ..imagery.decode import JP2_MAGICS, TIFF_MAGICS, ImageError, ImageTooLarge, check_size, read_header

DEFAULT_MAX_DECODED_BYTES = 256 * 1024 * 1024  # per image on the server (bands x pixels x bytes per sample)

FORMATS = {b"\x89PNG\r\n\x1a\n": "PNG", b"\xff\xd8\xff": "JPEG", b"GIF87a": "GIF", b"GIF89a": "GIF", b"BM": "BMP"}
DATA_URI = re.compile(r"^data:(?P<mime>[\w.+-]+/[\w.+-]+)?(?P<params>(;[\w.+-]+=[^;,]*)*)(?P<b64>;base64)?,", re.IGNORECASE)


class ImageRefError(GeoVLError):
    """A refused image reference. ``status`` is the HTTP status, ``code`` a stable slug."""

    def __init__(self, message: str, code: str, status: int = 400):
        super().__init__(message)  # .message (GeoVLError) is the message
        self.code, self.status = code, status


@dataclass
class ImageLimits:
    max_image_bytes: int = 20 * 1024 * 1024
    max_pixels: int = 25_000_000  # 5000x5000; checked from the header before decoding
    max_images: int = 8  # per request (all turns)
    max_decoded_bytes: int = DEFAULT_MAX_DECODED_BYTES  # per image, all bands/pages/overviews, from the header
    max_request_decoded_bytes: int = 2 * DEFAULT_MAX_DECODED_BYTES  # all images of one request together
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


def _too_big(n: int, limits: ImageLimits, what: str = "image") -> ImageRefError:
    return ImageRefError(
        f"{what} is {n} bytes, over the limit of {limits.max_image_bytes} bytes ({_mb(limits.max_image_bytes)}) / 图像文件过大",
        "image_too_large",
        413,
    )


# -- the reference kinds -------------------------------------------------------------------------
def decode_data_uri(url: str, limits: ImageLimits) -> bytes:
    m = DATA_URI.match(url)
    if not m:
        raise ImageRefError("malformed data URI: expected data:<mime>;base64,<data> / data URI 格式错误", "invalid_data_uri")
    if not m.group("b64"):
        raise ImageRefError("data URIs must be base64-encoded (data:<mime>;base64,...) / data URI 需为 base64 编码", "invalid_data_uri")
    payload = url[m.end() :]
    if len(payload) > (limits.max_image_bytes + 2) // 3 * 4 + 4:  # before decoding anything
        raise _too_big(len(payload) * 3 // 4, limits)
    payload = re.sub(r"\s+", "", payload)
    try:
        return base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError) as e:
        raise ImageRefError(f"malformed base64 in data URI ({e}) / base64 数据无效", "invalid_base64") from None


def fetch_http(url: str, limits: ImageLimits) -> bytes:
    """Download an http(s) image within ``limits.http_timeout`` seconds *in all* (connecting,
    redirects and every byte): a sender that trickles bytes cannot hold a worker past the deadline."""
    import asyncio

    import httpx

    if not limits.allow_http:
        raise ImageRefError(
            "http(s) image URLs are disabled on this server (start it with --allow-http-images); send the image as a "
            "data: URI instead / 服务器未开启网络图像下载，请使用 data: URI",
            "http_images_disabled",
        )

    async def download() -> bytes:
        async with httpx.AsyncClient(timeout=limits.http_timeout, follow_redirects=True, max_redirects=limits.max_redirects) as client:
            async with client.stream("GET", url) as r:
                if r.status_code != 200:
                    raise ImageRefError(f"fetching {url} answered HTTP {r.status_code} / 图像下载失败", "image_fetch_failed")
                declared = r.headers.get("content-length")
                if declared and declared.isdigit() and int(declared) > limits.max_image_bytes:
                    raise _too_big(int(declared), limits, f"{url}")
                buf = bytearray()
                async for chunk in r.aiter_bytes():
                    buf += chunk
                    if len(buf) > limits.max_image_bytes:
                        raise _too_big(len(buf), limits, f"{url} (read so far)")
                return bytes(buf)

    try:
        return asyncio.run(asyncio.wait_for(download(), limits.http_timeout))  # runs in a worker thread
    except (httpx.TimeoutException, asyncio.TimeoutError):
        raise ImageRefError(f"fetching {url} took longer than {limits.http_timeout:g} s in all / 图像下载超时", "image_fetch_timeout") from None
    except httpx.HTTPError as e:
        raise ImageRefError(f"cannot fetch {url}: {type(e).__name__}: {e} / 图像下载失败", "image_fetch_failed") from None


def _inside(path: Path, root: Path) -> bool:
    return path == root or root in path.parents


def resolve_local(ref: str, limits: ImageLimits) -> Path:
    """The real path of a ``file://`` URL or plain path, if it lies inside the allowed folder."""
    if limits.allowed_dir is None:
        raise ImageRefError(
            "local image paths and file:// URLs are disabled on this server (start it with --allowed-image-dir DIR); "
            "send the image as a data: URI instead / 服务器未开启本地图像路径",
            "local_images_disabled",
        )
    if ref.lower().startswith("file:"):
        u = urlparse(ref)
        if u.netloc not in ("", "localhost"):
            raise ImageRefError(f"file:// URL with a remote host {u.netloc!r} / 不支持远程主机的 file:// 地址", "path_not_allowed", 403)
        ref = unquote(u.path)
    if not ref or "\x00" in ref:
        raise ImageRefError("empty or invalid image path / 图像路径无效", "invalid_image_url")
    parts = ref.replace("\\", "/").split("/")
    if ".." in parts:
        raise ImageRefError(f"image path {ref!r} contains '..'; paths must stay inside the allowed folder / 路径不允许包含 ..", "path_not_allowed", 403)
    if ref.startswith("~"):
        raise ImageRefError(f"image path {ref!r}: '~' is not expanded / 不支持 ~ 路径", "path_not_allowed", 403)
    root = Path(limits.allowed_dir)
    candidate = Path(ref) if os.path.isabs(ref) else root / ref
    # lexical check first (no file-system access for paths that name something outside)
    lexical = Path(os.path.normpath(candidate))
    if not _inside(lexical, root) and not _inside(lexical, Path(limits._given_dir or root)):
        raise ImageRefError(f"image path {ref!r} is outside the allowed folder / 路径超出允许的目录", "path_not_allowed", 403)
    real = candidate.resolve()  # follows symlinks (reads link targets, opens nothing)
    if not _inside(real, root):
        raise ImageRefError(f"image path {ref!r} leads outside the allowed folder (symlink) / 符号链接指向允许目录之外", "path_not_allowed", 403)
    return real


def read_local(ref: str, limits: ImageLimits) -> bytes:
    real = resolve_local(ref, limits)
    root = Path(limits.allowed_dir)
    try:
        fd = os.open(real, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0))
    except FileNotFoundError:
        raise ImageRefError(f"image {ref!r} not found in the allowed folder / 图像不存在", "image_not_found", 404) from None
    except OSError as e:
        raise ImageRefError(f"cannot open image {ref!r}: {e.strerror} / 无法打开图像", "image_unreadable", 403) from None
    try:
        opened = Path(f"/proc/self/fd/{fd}")
        if opened.exists() and not _inside(Path(os.readlink(opened)), root):  # swapped between resolve and open
            raise ImageRefError(f"image path {ref!r} changed to point outside the allowed folder / 路径超出允许的目录", "path_not_allowed", 403)
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ImageRefError(f"image path {ref!r} is not a regular file / 不是普通文件", "invalid_image_url")
        if st.st_size > limits.max_image_bytes:
            raise _too_big(st.st_size, limits, f"image {ref!r}")
        with os.fdopen(fd, "rb", closefd=True) as f:
            fd = -1
            data = f.read(limits.max_image_bytes + 1)
        if len(data) > limits.max_image_bytes:
            raise _too_big(len(data), limits, f"image {ref!r}")
        return data
    finally:
        if fd >= 0:
            os.close(fd)


def load_reference(url: str, limits: ImageLimits) -> bytes:
    """Raw bytes of one image reference (not yet checked as an image)."""
    if not isinstance(url, str) or not url.strip():
        raise ImageRefError("image_url.url must be a non-empty string / 图像地址为空", "invalid_image_url")
    url = url.strip()
    low = url[:16].lower()
    if low.startswith("data:"):
        data = decode_data_uri(url, limits)
    elif low.startswith(("http://", "https://")):
        data = fetch_http(url, limits)
    elif re.match(r"^[a-z][a-z0-9+.-]*://", low) and not low.startswith("file://"):
        raise ImageRefError(f"unsupported URL scheme in {url[:40]!r}: use data:, http(s): or file: / 不支持的地址类型", "invalid_image_url")
    else:
        data = read_local(url, limits)
    if len(data) > limits.max_image_bytes:
        raise _too_big(len(data), limits)
    return data


# -- checking the bytes ---------------------------------------------------------------------------
def image_format(data: bytes) -> str | None:
    if data[:4] in TIFF_MAGICS:
        return "TIFF"
    if data.startswith(JP2_MAGICS):
        return "JPEG2000"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    return next((fmt for magic, fmt in FORMATS.items() if data.startswith(magic)), None)


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
        raise ImageRefError(f"cannot read the image header: {e.detail[:200]} / 图像头无法解析", "invalid_image") from None


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
        raise ImageRefError("the data is not a PNG, JPEG, WebP, GIF, BMP, TIFF or JPEG2000 image / 不是受支持的图像格式", "invalid_image")
    header = check_header(data, limits)  # pixels and decoded bytes, before GDAL or PIL decode anything
    if fmt in ("TIFF", "JPEG2000"):  # rasters: GDAL, as the one render path reads them
        from rasterio.io import MemoryFile

        try:
            with MemoryFile(bytes(data)) as mf, mf.open() as src:
                w, h = src.width, src.height
                if w * h * src.count > header.pixels * header.bands:  # GDAL may never see more than was checked
                    raise ImageRefError(f"{fmt} header says {header.width}x{header.height}x{header.bands} but GDAL reads "
                                        f"{w}x{h}x{src.count} / {fmt} 头信息不一致", "invalid_image")
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
        raise ImageRefError(f"corrupt or truncated {fmt} data: {str(e)[:200]} / 图像数据损坏", "invalid_image") from None
    finally:
        im.close()
    return w, h


def fetch_image(url: str, limits: ImageLimits) -> bytes:
    """Bytes of a checked image from an ``image_url`` reference."""
    data = load_reference(url, limits)
    check_image(data, limits)
    return data
