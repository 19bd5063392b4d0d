"""Inference engines: the one interface every inference path (eval, infer, the OpenAI-compatible API,
the web app, tiled maps) goes through. Nothing outside :mod:`geovl.inference` calls ``model.generate``.

- :class:`~geovl.inference.engine.LocalEngine` — a local model folder (+ optional peft adapter) with
  stock transformers classes; left-padded, length-sorted batched generation; streaming.
- :class:`~geovl.inference.remote.RemoteEngine` — any OpenAI-compatible server (vLLM, SGLang, geovl).
- :mod:`~geovl.inference.capabilities` — what an engine can do beyond generating: score choices
  (:class:`ChoiceScorer`), read cubes (:class:`CubeReader`), its input spec (``engine.inputs``).

Importing this package is cheap (no torch/transformers); engines import those when constructed.
"""

from __future__ import annotations

from .capabilities import ChoiceScorer, CubeReader, InputSpec, can_score_choices, cube_reader, input_spec
from .engine import ChatRequest, Engine, EngineError, EngineStats, GenerationParams, LocalEngine

__all__ = [
    "ChatRequest",
    "ChoiceScorer",
    "CubeReader",
    "Engine",
    "EngineError",
    "EngineStats",
    "GenerationParams",
    "InputSpec",
    "LocalEngine",
    "RemoteEngine",
    "can_score_choices",
    "cube_reader",
    "input_spec",
    "open_engine",
]


def __getattr__(name):  # lazy: the openai client is imported only when a RemoteEngine is wanted
    if name == "RemoteEngine":
        from .remote import RemoteEngine

        return RemoteEngine
    raise AttributeError(name)


def open_engine(
    model: str | None = None,
    adapter: str | None = None,
    api: str | None = None,
    api_key: str | None = None,
    batch_size: int = 8,
    device: str = "auto",
    quantization: str = "none",
    attn_implementation: str | None = None,
    api_retries: int = 2,
) -> Engine:
    """The engine the CLI options describe: ``--api URL`` → RemoteEngine (``model`` names the served
    model, optional); otherwise LocalEngine on the model folder (+ adapter)."""
    if api:
        if adapter:
            raise EngineError("--adapter cannot be used with --api (the server decides which weights it serves)")
        from .remote import RemoteEngine

        return RemoteEngine(api, api_key=api_key, model=model, concurrency=batch_size, max_retries=api_retries)
    if not model:
        raise EngineError("give --model FOLDER (a local model or adapter folder) or --api URL")
    from .engine import LocalEngine

    return LocalEngine(
        model,
        adapter=adapter,
        device=device,
        batch_size=batch_size,
        quantization=quantization,
        attn_implementation=attn_implementation,
    )
