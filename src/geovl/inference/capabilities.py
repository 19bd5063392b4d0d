"""What an engine can do beyond :class:`~geovl.inference.engine.Engine` (``generate``/``stream``).

Callers ask these instead of probing attributes:

- :class:`ChoiceScorer` — engines that score given answers (``choice_logprobs``): forced-choice eval,
  yes/no probability maps. Local models can; an OpenAI-compatible server cannot.
- :class:`InputSpec` (``engine.inputs``) — what the model reads: RGB images (``kind="image"``) or
  hyperspectral cubes (``kind="cube"``, ``n_bands``), and the preprocessing config training wrote
  (raster rendering, pixel bounds). Engines that declare none read plain images with default rendering.
- :class:`CubeReader` — engines whose model reads cubes: ``cube(item)`` checks and converts one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:  # typing only: this module imports nothing at run time
    from ..models.preprocess import PreprocessConfig
    from .engine import ChatRequest

IMAGE, CUBE = "image", "cube"


@dataclass(frozen=True)
class InputSpec:
    """What an engine's model reads (``engine.inputs``)."""

    kind: str = IMAGE  # "image": encoded RGB images; "cube": hyperspectral cubes (a spectral projector)
    n_bands: int | None = None  # bands per cube (kind "cube")
    preprocess: PreprocessConfig | None = None  # the training-time preprocessing config, if any

    def __post_init__(self):
        if self.kind not in (IMAGE, CUBE):
            raise ValueError(f"InputSpec.kind must be {IMAGE!r} or {CUBE!r}, got {self.kind!r}")

    @property
    def reads_cubes(self) -> bool:
        return self.kind == CUBE


DEFAULT_INPUTS = InputSpec()


@runtime_checkable
class ChoiceScorer(Protocol):
    """An engine that scores candidate answers: per request, the log-probability of each candidate."""

    def choice_logprobs(self, requests: list[ChatRequest], candidates: list[list[str]]) -> list[list[float]]: ...


@runtime_checkable
class CubeReader(Protocol):
    """An engine whose model reads hyperspectral cubes: ``cube(item)`` is one request image as the model's
    input (an array, a cube path, or .npy / multi-band GeoTIFF bytes); a bad one raises ``ImageError``."""

    def cube(self, item: Any) -> Any: ...


def input_spec(engine: object) -> InputSpec:
    """``engine.inputs`` when the engine declares it, else :data:`DEFAULT_INPUTS` (RGB images, default rendering)."""
    spec = getattr(engine, "inputs", None)
    return spec if isinstance(spec, InputSpec) else DEFAULT_INPUTS


def can_score_choices(engine: object) -> bool:
    return isinstance(engine, ChoiceScorer)


def cube_reader(engine: object) -> CubeReader | None:
    """The engine as a :class:`CubeReader` when its model reads cubes, else None."""
    if input_spec(engine).reads_cubes and isinstance(engine, CubeReader):
        return engine
    return None
