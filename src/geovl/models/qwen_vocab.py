"""The real Qwen vocabulary, offline, from the ``dashscope`` 2.0.2 wheel.

The wheel (Apache-2.0) ships ``dashscope/resources/qwen.tiktoken``: 151,643 lines of
``base64(token bytes) rank``, the byte-level BPE of Qwen2 / Qwen2.5 / Qwen3 (and their VL models).
We only read that data file — no dashscope code is imported — and rebuild the vocabulary and merges
the way transformers' ``TikTokenConverter`` does, then add the Qwen special tokens from id 151,643.
The result reproduces real Qwen2.5-VL token ids (``<|im_start|>`` 151644, ``<|image_pad|>`` 151655,
"Hello, world!" → [9707, 11, 1879, 0]).
"""

from __future__ import annotations

import base64
import importlib.util
import os
from functools import lru_cache
from pathlib import Path

from ..errors import GeoVLError

ENV_VAR = "GEOVL_QWEN_TIKTOKEN"
NUM_RANKS = 151_643
INSTALL_HINT = "pip install --no-deps dashscope==2.0.2"


class QwenVocabNotFound(GeoVLError, FileNotFoundError):
    """The qwen.tiktoken file is not available (dashscope wheel not installed, env var not set)."""


def find_qwen_tiktoken() -> Path:
    """Locate ``qwen.tiktoken``: ``$GEOVL_QWEN_TIKTOKEN``, else inside the installed dashscope package."""
    env = os.environ.get(ENV_VAR)
    if env:
        p = Path(env).expanduser()
        if not p.is_file():
            raise QwenVocabNotFound(f"{ENV_VAR}={env!r} does not name an existing file")
        return p
    spec = importlib.util.find_spec("dashscope")  # finds the package folder without importing it
    if spec is not None:
        for folder in spec.submodule_search_locations or []:
            p = Path(folder) / "resources" / "qwen.tiktoken"
            if p.is_file():
                return p
    raise QwenVocabNotFound(
        "the real Qwen vocabulary (qwen.tiktoken) was not found; install it with "
        f"`{INSTALL_HINT}` (only the data file is used) or set {ENV_VAR} to the file's path. "
        "/ 未找到 Qwen 词表 qwen.tiktoken：请运行 "
        f"`{INSTALL_HINT}`，或把环境变量 {ENV_VAR} 设为该文件路径。"
    )


def load_ranks(path: str | os.PathLike) -> dict[bytes, int]:
    """Parse a tiktoken file (``base64 rank`` per line) into {token bytes: rank}."""
    ranks: dict[bytes, int] = {}
    with open(path, "rb") as f:
        for lineno, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            try:
                tok_b64, rank = line.split()
                ranks[base64.b64decode(tok_b64, validate=True)] = int(rank)
            except ValueError as e:
                raise ValueError(f"{path}: line {lineno} is not 'base64 rank': {line[:60]!r}") from e
    return ranks


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte → printable-character map (same as transformers')."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def ranks_to_vocab_merges(ranks: dict[bytes, int]) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Byte-level vocab and merges from BPE ranks, exactly like transformers' ``TikTokenConverter``:
    every split of a token into two known tokens is a merge, ranked by the merged token's rank."""
    enc = _bytes_to_unicode()

    def as_str(b: bytes) -> str:
        return "".join(enc[x] for x in b)

    vocab: dict[str, int] = {}
    merges: list[tuple[bytes, bytes, int]] = []
    for token, rank in ranks.items():
        vocab[as_str(token)] = rank
        if len(token) == 1:
            continue
        local = []
        for i in range(1, len(token)):
            left, right = token[:i], token[i:]
            if left in ranks and right in ranks:
                local.append((left, right, rank))
        local.sort(key=lambda x: (ranks[x[0]], ranks[x[1]]))
        merges.extend(local)
    merges.sort(key=lambda m: m[2])
    return vocab, [(as_str(a), as_str(b)) for a, b, _ in merges]


@lru_cache(maxsize=1)
def _qwen_vocab_merges(path: str) -> tuple[dict[str, int], list[tuple[str, str]]]:
    ranks = load_ranks(path)
    if len(ranks) != NUM_RANKS or sorted(ranks.values()) != list(range(NUM_RANKS)):
        raise ValueError(f"{path}: expected ranks 0..{NUM_RANKS - 1} (Qwen), got {len(ranks)} entries")
    return ranks_to_vocab_merges(ranks)


def build_qwen_tokenizer(path: str | os.PathLike | None = None):
    """A ``Qwen2Tokenizer`` with the real Qwen vocabulary, the Qwen specials at 151643.. and the
    geovl chat template."""
    from .tokenizer import qwen2_tokenizer

    p = Path(path) if path is not None else find_qwen_tiktoken()
    vocab, merges = _qwen_vocab_merges(str(p.resolve()))
    return qwen2_tokenizer(vocab, merges)
