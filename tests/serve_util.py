"""Helpers for the serving tests: free ports, real server subprocesses (``geovl serve`` / ``geovl ui``)
that are always stopped, test images and data URIs."""

from __future__ import annotations

import base64
import contextlib
import io
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def png(seed: int, w: int = 112, h: int = 84) -> bytes:
    a = np.random.default_rng(seed).integers(0, 255, (h, w, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="PNG")
    return buf.getvalue()


def jpeg(seed: int, w: int = 64, h: int = 96) -> bytes:
    a = np.random.default_rng(seed).integers(0, 255, (h, w, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="JPEG")
    return buf.getvalue()


def data_uri(b: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64," + base64.b64encode(b).decode()


def server_env() -> dict:
    env = dict(os.environ)
    env.update(
        GRADIO_ANALYTICS_ENABLED="False",
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        PYTHONUNBUFFERED="1",
        TOKENIZERS_PARALLELISM="false",
    )
    env.pop("GEOVL_API_KEY", None)
    return env


class Server:
    """A server subprocess: ``start()`` returns at once; ``wait(url)`` polls until it answers."""

    def __init__(self, argv: list[str], log_path: Path, port: int, prefix: list[str] | None = None):
        self.port = port
        self.log_path = Path(log_path)
        self.argv = (prefix or [sys.executable, "-m", "geovl"]) + argv
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> "Server":
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            self.argv, stdout=self._log, stderr=subprocess.STDOUT, env=server_env(), start_new_session=True
        )
        return self

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]

    def wait(self, path: str = "/health", timeout: float = 180.0) -> "Server":
        import httpx

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.log()}")
            try:
                if httpx.get(self.url + path, timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        raise RuntimeError(f"server not ready after {timeout} s:\n{self.log()}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        if getattr(self, "_log", None):
            self._log.close()


@contextlib.contextmanager
def running(*servers: Server, path: str = "/health"):
    """Start all servers at once (their start-ups overlap), wait for each, always stop them."""
    try:
        for s in servers:
            s.start()
        for s in servers:
            s.wait(path)
        yield servers
    finally:
        for s in servers:
            s.stop()
