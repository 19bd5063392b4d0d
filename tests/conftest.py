"""Shared session fixtures.

- ``tiny_model_dir(family, vocab="small")`` → Path of a tiny model folder built once per session
  (``family``: "qwen2-vl" / "qwen2.5-vl" / "qwen3-vl" or a model_type). Treat it as read-only:
  copy it (``shutil.copytree``) before writing into it.
- ``qwen_tiktoken`` → Path of the real Qwen vocabulary file; skips the test if it is not installed.
- ``spectral_scenes`` → folder of 6 tiny synthetic GF-5B scenes (330 bands, 32 px; train/test 50/50) from
  ``geovl spectral synth``, built once per session (tests may add dataset files next to its parquet files).
- ``TINY_FAMILIES`` — the three CLI family names, for ``pytest.mark.parametrize``.
"""

from __future__ import annotations

import pytest

TINY_FAMILIES = ("qwen2-vl", "qwen2.5-vl", "qwen3-vl")

QWEN_VOCAB_MISSING = (
    "real Qwen vocabulary not installed: run `pip install --no-deps dashscope==2.0.2` "
    "(make install does) or set GEOVL_QWEN_TIKTOKEN"
)


@pytest.fixture(scope="session")
def qwen_tiktoken():
    from geovl.models.qwen_vocab import QwenVocabNotFound, find_qwen_tiktoken

    try:
        return find_qwen_tiktoken()
    except QwenVocabNotFound:
        pytest.skip(QWEN_VOCAB_MISSING)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """A factory: ``tiny_model_dir("qwen2.5-vl")`` builds (once per session, seed 0, defaults) and
    returns the folder of a tiny model; ``vocab="qwen"`` uses the real Qwen vocabulary (skips if absent)."""
    from geovl.models.registry import get_family

    cache = {}

    def get(family: str, vocab: str = "small"):
        from geovl.models.tiny import build_tiny

        fam = get_family(family)
        key = (fam.key, vocab)
        if key not in cache:
            if vocab == "qwen":
                from geovl.models.qwen_vocab import QwenVocabNotFound, find_qwen_tiktoken

                try:
                    find_qwen_tiktoken()
                except QwenVocabNotFound:
                    pytest.skip(QWEN_VOCAB_MISSING)
            root = tmp_path_factory.mktemp(f"tiny-{fam.key}-{vocab}")
            cache[key] = build_tiny(fam.key, root / "model", vocab=vocab, seed=0)
        return cache[key]

    return get


@pytest.fixture(scope="session")
def spectral_scenes(tmp_path_factory):
    from geovl.spectral.synth_write import synthesize

    d = tmp_path_factory.mktemp("spectral-scenes") / "data"
    synthesize(d, 6, sensor="gf5b", size=32, seed=1, split="train=0.5,test=0.5", progress=False)
    return d
