"""The HTTP side of image safety: what the API, the web app and the geo routes use to read the images
a client sends. Everything here is :mod:`geovl.imagery.safety` (the one image-safety module: one
format table, one size check, one error family under :class:`geovl.errors.GeoVLError`); this module
only names it for the HTTP layer. :class:`ImageRefError` carries the HTTP ``status`` and the stable
``code`` an API error answers with.
"""

from __future__ import annotations

from ..imagery.safety import (  # noqa: F401
    ImageLimits,
    ImageRefError,
    check_header,
    check_image,
    check_request_images,
    decode_data_uri,
    fetch_http,
    fetch_image,
    image_format,
    load_reference,
    read_local,
    resolve_local,
)
