"""HTTP only: the OpenAI-compatible API (:mod:`.api`), its micro-batcher (:mod:`.batcher`), the wire
format (:mod:`.openai_format`), the GeoTIFF routes (:mod:`.geo_api`) and request image checks
(:mod:`.images`). The engines they call live in :mod:`geovl.inference`; only :mod:`geovl.commands`
imports this package."""
