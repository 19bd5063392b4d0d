"""Fetch real weights from a model hub (Hugging Face or ModelScope) for users who have one.

Where no hub is reachable (as on an offline machine) this fails fast — a few seconds, not a
retry loop — with a message saying what to do instead.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from urllib.parse import urlparse

from ..errors import GeoVLError

HUBS = {
    "huggingface": os.environ.get("HF_ENDPOINT", "https://huggingface.co"),
    "modelscope": os.environ.get("MODELSCOPE_DOMAIN", "https://www.modelscope.cn"),
}
CONNECT_TIMEOUT_S = 5.0


class DownloadError(GeoVLError, RuntimeError):
    pass


def hub_reachable(hub: str, timeout: float = CONNECT_TIMEOUT_S) -> tuple[bool, str]:
    """(reachable, reason): a DNS lookup and a TCP connect to the hub's endpoint."""
    if os.environ.get("HF_HUB_OFFLINE") == "1" and hub == "huggingface":
        return False, "HF_HUB_OFFLINE=1 is set"
    url = urlparse(HUBS[hub] if "://" in HUBS[hub] else "https://" + HUBS[hub])
    host, port = url.hostname, url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True, ""
    except OSError as e:
        return False, f"cannot connect to {host}:{port} ({e.__class__.__name__}: {e})"


def download(name: str, out: str | Path, hub: str = "huggingface", revision: str | None = None) -> Path:
    if hub not in HUBS:
        raise DownloadError(f"unknown hub {hub!r}; use one of {sorted(HUBS)}")
    if Path(name).is_dir():
        raise DownloadError(f"{name} is already a local folder; pass it directly as the model")
    ok, why = hub_reachable(hub)
    if not ok:
        raise DownloadError(
            f"the {hub} hub is not reachable from this machine: {why}.\n"
            f"  Download {name} on a machine with access and copy the folder here, or use an offline tiny model:\n"
            f"  geovl model tiny --family qwen2.5-vl --out models/tiny"
        )
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if hub == "huggingface":
        from huggingface_hub import snapshot_download

        path = snapshot_download(repo_id=name, local_dir=str(out), revision=revision)
    else:
        try:
            from modelscope import snapshot_download as ms_download
        except ImportError:
            raise DownloadError("the modelscope hub needs the modelscope package: pip install modelscope") from None
        path = ms_download(name, local_dir=str(out), revision=revision)
    from .loading import read_family

    read_family(path)  # a Qwen-VL folder we support, or a clear error
    return Path(path)


def fetch_for_training(name: str) -> Path:
    """A hub id given as ``model=`` in a recipe: download into the geovl cache and return the folder."""
    if "/" not in name or name.startswith((".", "/")):
        from .loading import ModelFolderError

        raise ModelFolderError(f"{name}: model folder not found (and not a hub id like Qwen/Qwen2.5-VL-3B-Instruct)")
    cache = Path(os.environ.get("GEOVL_CACHE", Path.home() / ".cache" / "geovl")) / "models" / name.replace("/", "--")
    if (cache / "config.json").is_file():
        return cache
    return download(name, cache)
