"""The inference engine interface and :class:`LocalEngine` (a model folder on this machine).

A :class:`ChatRequest` holds geovl-schema messages (content parts ``{"type": "image"}`` /
``{"type": "video"}`` / ``{"type": "text", "text": ...}``, any number of turns, images and videos) plus
the encoded image bytes in image-part order and the videos (encoded bytes or paths) in video-part order. ``generate`` answers a list of requests (order kept); ``stream`` yields the
text deltas of one answer as they are produced.

LocalEngine loads with the stock Auto classes, attaches an optional peft adapter, applies the
preprocessing config written by training (adapter folder first, else model folder) so pixel
bounds and raster rendering match training, and generates in left-padded batches of requests
sorted by length (mixed text-only, image and video requests are fine). Videos are sampled into frames
with the folder's video settings (``PreprocessConfig.video``, else the :class:`~geovl.imagery.video.VideoSettings`
defaults) — as training sampled them. LLM forward calls are counted
with a forward hook on the language model (``engine.stats``).
"""

from __future__ import annotations

import threading
from dataclasses import asdict, dataclass, field
from typing import Iterator, Protocol, runtime_checkable

from ..errors import GeoVLError


class EngineError(GeoVLError, RuntimeError):
    """A user-facing inference problem (bad request, unreachable server, bad option)."""


class PromptTooLong(EngineError):
    """A prompt (text + image tokens) longer than the model's context, refused before generation.
    ``reason``/``detail`` let batch evaluation reject just that sample."""

    reason = "prompt_too_long"

    def __init__(self, tokens: int, limit: int):
        self.tokens, self.limit = tokens, limit
        self.detail = (
            f"the prompt is {tokens} tokens (text + image tokens), longer than the model's context of "
            f"{limit} positions (max_position_embeddings): shorten the text, or use fewer or smaller "
            "images / 提示（文本+图像）超出模型上下文长度"
        )
        super().__init__(self.detail)


MIN_SAMPLING_TEMPERATURE = 1e-5  # below it logits / temperature overflow; sampling is greedy in the limit anyway
SEED_RANGE = (-(2**63), 2**63 - 1)  # what torch.manual_seed and every generator here accept


@dataclass
class GenerationParams:
    max_new_tokens: int = 64
    temperature: float = 0.0  # 0 → greedy; 0 < t < MIN_SAMPLING_TEMPERATURE is treated as 0
    top_p: float = 1.0
    seed: int | None = None

    def __post_init__(self):
        import math

        if int(self.max_new_tokens) < 1:
            raise EngineError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if not math.isfinite(self.temperature) or self.temperature < 0:
            raise EngineError(f"temperature must be a finite number >= 0, got {self.temperature}")
        if self.temperature < MIN_SAMPLING_TEMPERATURE:
            self.temperature = 0.0
        if not (math.isfinite(self.top_p) and 0 < self.top_p <= 1):
            raise EngineError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.seed is not None and (
            isinstance(self.seed, bool) or not SEED_RANGE[0] <= int(self.seed) <= SEED_RANGE[1]
        ):
            raise EngineError(f"seed must be an integer in [-2^63, 2^63 - 1], got {self.seed}")


@dataclass
class ChatRequest:
    messages: list[dict]
    images: list[bytes] = field(
        default_factory=list
    )  # encoded images; for a spectral model: cubes (arrays, paths, .npy/GeoTIFF bytes)

    videos: list = field(default_factory=list)  # encoded videos (bytes) or paths, in video-part order

    def __post_init__(self):
        for kind, items in (("image", self.images), ("video", self.videos)):
            n_parts = sum(
                1
                for m in self.messages
                for p in m.get("content") or []
                if isinstance(p, dict) and p.get("type") == kind
            )
            if n_parts != len(items):
                raise EngineError(f"request has {n_parts} {kind} parts but {len(items)} {kind}s")


@dataclass
class EngineStats:
    forward_calls: int = 0  # LLM forward passes (prefill + one per decoding step); 0 for remote engines
    generated_tokens: int = 0  # new tokens per sample, through the end-of-turn token
    samples: int = 0

    def as_dict(self) -> dict:
        return asdict(self)

    def reset(self) -> None:
        self.forward_calls = self.generated_tokens = self.samples = 0


@runtime_checkable
class Engine(Protocol):
    name: str
    stats: EngineStats

    def generate(self, requests: list[ChatRequest], params: GenerationParams) -> list[str]: ...

    def stream(self, request: ChatRequest, params: GenerationParams) -> Iterator[str]: ...


# optional capabilities (choice scoring, cube inputs, the input spec): geovl.inference.capabilities


def decode_image(data: bytes, preprocess=None):
    """Encoded bytes → RGB PIL image. Rasters (TIFF, JPEG2000, …) are rendered by
    :mod:`geovl.imagery.render` with the preprocessing config's render settings — the same function
    and settings as ``data convert``, ``infer`` and ``ask`` (the RGB vision input's :meth:`prepare`)."""
    from ..models.vision_input import RGBInput

    return RGBInput().prepare(data, preprocess)


def _pick_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise EngineError(f"device={device} but this machine has no CUDA device; use --device cpu")
    return device


def _pick_dtype(dtype, device: str):
    import torch

    if dtype is None or dtype == "auto":
        if device.startswith("cuda") and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    if isinstance(dtype, str):
        table = {
            "fp32": torch.float32,
            "float32": torch.float32,
            "bf16": torch.bfloat16,
            "bfloat16": torch.bfloat16,
            "fp16": torch.float16,
            "float16": torch.float16,
        }
        if dtype not in table:
            raise EngineError(f"unknown dtype {dtype!r}; use one of {sorted(table)}")
        return table[dtype]
    return dtype


def quantization_config(quantization: str):
    """bitsandbytes config for ``4bit``/``8bit`` (CUDA only), ``None`` for ``none``."""
    import torch

    if quantization in (None, "none"):
        return None
    if quantization not in ("4bit", "8bit"):
        raise EngineError(f"unknown quantization {quantization!r}; use none, 4bit or 8bit")
    if not torch.cuda.is_available():
        raise EngineError(
            f"--load-in-{quantization} needs a CUDA GPU and bitsandbytes; this machine has no CUDA device. "
            "Load the model without quantization here / 量化加载需要 CUDA GPU"
        )
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        raise EngineError(f"--load-in-{quantization} needs bitsandbytes: pip install bitsandbytes") from None
    from transformers import BitsAndBytesConfig

    if quantization == "4bit":
        return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.bfloat16)
    return BitsAndBytesConfig(load_in_8bit=True)


class LocalEngine:
    """A model folder (+ optional peft adapter) generating with transformers on this machine."""

    def __init__(
        self,
        model: str,
        adapter: str | None = None,
        device: str = "auto",
        dtype=None,
        batch_size: int = 8,
        quantization: str = "none",
        attn_implementation: str | None = None,
    ):
        import torch
        from transformers import AutoModelForImageTextToText, AutoProcessor

        from ..models.loading import ModelFolderError, damaged_file, load_processor, read_family
        from .adapter import attach_adapter, has_processor, preprocess_for, resolve_folders

        if batch_size < 1:
            raise EngineError(f"batch_size must be >= 1, got {batch_size}")
        self.batch_size = int(batch_size)
        model_dir, adapter_dir = resolve_folders(model, adapter)
        self.family = read_family(model_dir)
        self.device = _pick_device(device)
        self.dtype = _pick_dtype(dtype, self.device)
        qcfg = quantization_config(quantization)  # clear error without CUDA
        kw = {"dtype": self.dtype}
        if qcfg is not None:
            kw.update(quantization_config=qcfg, device_map="auto")
        if attn_implementation:
            kw["attn_implementation"] = attn_implementation
        try:
            net = AutoModelForImageTextToText.from_pretrained(str(model_dir), **kw)
        except Exception as e:  # noqa: BLE001 - transformers / safetensors / torch raise many types
            msg = str(e).lower()
            if not (
                attn_implementation
                and isinstance(e, (ImportError, ValueError))
                and ("attn" in msg or "attention" in msg)
            ):
                where = damaged_file(model_dir)  # a truncated or garbled weights file: one line naming it
                if where is None:
                    raise
                raise ModelFolderError(where) from e
            raise EngineError(
                f"attn_implementation={attn_implementation!r} is not available here: {str(e).splitlines()[0][:300]} "
                "(eager and sdpa work everywhere; flash_attention_2 needs a CUDA GPU and the flash-attn package) / 注意力实现不可用"
            ) from None
        if qcfg is None:
            net.to(self.device)
        if adapter_dir is not None:
            net = attach_adapter(net, model_dir, adapter_dir, self.family)
        self.model = net.eval()
        if adapter_dir is not None and has_processor(adapter_dir):  # saved by training next to the adapter
            self.processor = AutoProcessor.from_pretrained(str(adapter_dir))
            if getattr(self.processor, "image_processor", None) is None:
                raise ModelFolderError(
                    f"{adapter_dir}: its processor files load no image processor; remove them to use {model_dir}'s"
                )
        else:
            self.processor = load_processor(model_dir)
        self.preprocess = preprocess_for(model_dir, adapter_dir)
        if self.preprocess is not None:
            self.preprocess.apply(self.processor)
        from ..models.vision_input import VisionInputError, load

        # how images reach the model, chosen by the folder: RGB pictures, or e.g. hyperspectral cubes through a
        # spectral projector (its files sit beside the weights)
        try:
            self.vision_input = load(
                self.model, self.family, self.processor, adapter_dir, model_dir, preprocess=self.preprocess
            )
        except VisionInputError as e:
            raise ModelFolderError(str(e)) from None
        self.spectral = (
            self.vision_input if self.vision_input.kind == "spectral" else None
        )  # (callers not yet on vision_input)
        from ..models.vision_input import video_settings

        self.video = video_settings(self.preprocess)  # how videos are sampled: as training sampled them
        self.tokenizer = self.processor.tokenizer
        self.tokenizer.padding_side = "left"  # batched generation continues every row from its last token
        gc = self.model.generation_config
        eos = gc.eos_token_id if gc.eos_token_id is not None else self.tokenizer.eos_token_id
        self._eos = set(eos if isinstance(eos, (list, tuple)) else [eos])
        self._pad = gc.pad_token_id if gc.pad_token_id is not None else self.tokenizer.pad_token_id
        self.model_dir, self.adapter_dir = model_dir, adapter_dir
        self.name = model_dir.resolve().name
        if adapter_dir is not None:
            a = adapter_dir.resolve()
            self.name += f"+{a.parent.name}/{a.name}"
        self.stats = EngineStats()
        self._lock = threading.Lock()
        self._count_lock, self._count_tokenizer = threading.Lock(), None
        self._torch = torch
        self._hook = self._language_model().register_forward_hook(self._count_forward)

    @property
    def inputs(self):
        """What this model reads (:class:`~geovl.inference.capabilities.InputSpec`): cubes with a spectral projector, else images."""
        from .capabilities import CUBE, IMAGE, InputSpec

        if self.spectral is not None:
            return InputSpec(kind=CUBE, n_bands=self.spectral.n_bands, preprocess=self.preprocess)
        return InputSpec(kind=IMAGE, preprocess=self.preprocess)

    # -- instrumentation ---------------------------------------------------------------------
    def _language_model(self):
        base = self.model.get_base_model() if hasattr(self.model, "get_base_model") else self.model
        modules = dict(base.named_modules())
        if self.family.llm_prefix not in modules:
            raise EngineError(f"{self.model_dir}: no {self.family.llm_prefix} module to instrument")
        return modules[self.family.llm_prefix]

    def _count_forward(self, module, args, output) -> None:
        self.stats.forward_calls += 1

    def close(self) -> None:
        self._hook.remove()

    # -- encoding ------------------------------------------------------------------------------
    def prompt_text(self, request: ChatRequest) -> str:
        self.check_text(request)
        return self.processor.apply_chat_template(request.messages, tokenize=False, add_generation_prompt=True)

    def check_text(self, request: ChatRequest) -> None:
        """Refuse message text that contains a control token (``<|im_start|>``, ``<|image_pad|>``, …):
        the chat template pastes text verbatim and the tokenizer would turn it into the real token —
        a forged turn or image placeholder. :class:`EngineError` names the token."""
        if getattr(self, "_control", None) is None:
            import re

            toks = sorted(
                {t.content for t in self.tokenizer.added_tokens_decoder.values() if t.special and t.content},
                key=len,
                reverse=True,
            )
            self._control = re.compile("|".join(map(re.escape, toks))) if toks else None
        if self._control is None:
            return
        for i, m in enumerate(request.messages):
            for p in m.get("content") or []:
                text = p.get("text") if isinstance(p, dict) else None
                if isinstance(text, str) and (hit := self._control.search(text)):
                    raise EngineError(
                        f"messages[{i}] contains the control token {hit.group(0)!r}; special tokens are not allowed "
                        "in message text / 消息文本不能包含特殊控制符"
                    )

    def clips(self, request: ChatRequest) -> ChatRequest:
        """``request`` with its videos sampled into clips (with this model's video settings) — decoded once, for
        both counting and encoding; bad video: :class:`~geovl.imagery.video.VideoError`."""
        if not request.videos:
            return request
        from ..models.vision_input import read_clip

        if self.spectral is not None:
            raise EngineError("this model reads hyperspectral cubes through its projector; it cannot take video parts")
        return ChatRequest(request.messages, request.images, [read_clip(v, self.video) for v in request.videos])

    def estimate_length(self, request: ChatRequest, tokenizer=None, exact: bool = False) -> int:
        """Prompt tokens after image- and video-pad expansion (text tokenized; images from their headers). Videos:
        ``exact`` — sampled, then counted with the processor's maths
        (:func:`~geovl.models.vision_input.video_prompt_tokens`); else (for sorting a batch) from the container
        headers, nothing decoded (:func:`~geovl.data.video_budget.video_cost` of the shape sampling will give)."""
        from ..models.preprocess import PreprocessConfig
        from ..models.vision_input import video_prompt_tokens

        tok = tokenizer or self.tokenizer
        n = len(tok(self.prompt_text(request), add_special_tokens=False)["input_ids"])
        if request.videos and (exact or self.spectral is not None):
            request = self.clips(request)
        for v in request.videos:
            n += (
                video_prompt_tokens(self.processor, self.family, v, tok)[1] - 1
                if hasattr(v, "frames")
                else self._video_estimate(v, tok)
            )
        lo, hi = PreprocessConfig.bounds_of(self.processor)
        for b in request.images:
            size = self.vision_input.image_size(b)  # from the header; None: unknown without reading it (a cube path)
            n += (
                self.family.image_tokens(size[0], size[1], lo, hi) - 1 if size is not None else 1024
            )  # (for sorting only)
        return n

    def _video_estimate(self, item, tok) -> int:
        """Tokens a video adds beyond its placeholder, from its headers (probe; nothing decoded)."""
        from ..data.video_budget import VideoShape, video_cost
        from ..imagery.video import probe, sampled_shape
        from ..models.registry import video_bounds_of

        info = probe(bytes(item) if isinstance(item, (bytearray, memoryview)) else item, self.video)
        n, h, w = sampled_shape(info, self.video)
        count = lambda t: len(tok(t, add_special_tokens=False)["input_ids"])  # noqa: E731
        shape = VideoShape(n, h, w, self.video.fps)
        return video_cost(self.family, shape, count_text=count, **video_bounds_of(self.processor))

    @property
    def context_length(self) -> int | None:
        """Positions the language model supports (``max_position_embeddings``), if the config says."""
        cfg = self.model.config
        text = getattr(cfg, "text_config", None) or cfg
        n = getattr(text, "max_position_embeddings", None) or getattr(cfg, "max_position_embeddings", None)
        return int(n) if n else None

    def count_prompt_tokens(self, request: ChatRequest) -> int:
        """Exact prompt tokens of a request (image pads expanded) — what ``usage.prompt_tokens`` reports.
        Safe to call while the engine generates: it uses its own copy of the tokenizer (a fast
        tokenizer's padding state must not change under a running encode)."""
        import copy

        with self._count_lock:
            if self._count_tokenizer is None:
                self._count_tokenizer = copy.deepcopy(self.tokenizer)
            return self.estimate_length(request, self._count_tokenizer, exact=True)

    def encode(self, requests: list[ChatRequest], texts: list[str] | None = None):
        """Left-padded model inputs for a batch (images flattened in request order); ``texts`` replaces
        the prompts (e.g. prompt + a candidate answer)."""
        from ..models.vision_input import video_processor_kwargs

        texts = texts if texts is not None else [self.prompt_text(r) for r in requests]
        images = [self.vision_input.prepare(b, self.preprocess) for r in requests for b in r.images]
        clips = [c for r in requests for c in self.clips(r).videos]
        enc = self.processor(
            text=texts,
            images=images or None,
            return_tensors="pt",
            padding=True,
            **self.vision_input.processor_kwargs,
            **video_processor_kwargs(clips),
        )
        limit = self.context_length
        if limit is not None and "attention_mask" in enc:
            longest = int(enc["attention_mask"].sum(dim=1).max())
            if longest > limit:  # refused before any forward pass (the model would index past its positions)
                raise PromptTooLong(longest, limit)
        enc = enc.to(self.model.device)
        for k in ("pixel_values", "pixel_values_videos"):
            if k in enc:
                enc[k] = enc[k].to(self.dtype)
        return enc

    def cube(self, item):
        """A request image as the spectral model's input (N, H, W): an array, a cube path, or .npy / multi-band
        GeoTIFF bytes; a wrong band count or wavelength is an :class:`ImageError` (``bad_cube``)."""
        return self.spectral.prepare(item)

    def _gen_kwargs(self, params: GenerationParams) -> dict:
        kw = {"max_new_tokens": int(params.max_new_tokens), "pad_token_id": self._pad}
        if params.temperature > 0:
            # top_k=0: only temperature/top_p shape sampling (Qwen's generation_config ships top_k=1)
            kw.update(do_sample=True, temperature=float(params.temperature), top_p=float(params.top_p), top_k=0)
        else:
            kw.update(do_sample=False)
        return kw

    def _finish(self, new_tokens, usage: list | None = None) -> list[str]:
        """Decoded answers; ``usage`` (optional) receives ``{"completion_tokens", "finish_reason"}`` per row."""
        texts = []
        for row in new_tokens.tolist():
            n = next((i + 1 for i, t in enumerate(row) if t in self._eos), None)
            stopped = n is not None
            n = n if stopped else len(row)
            self.stats.generated_tokens += n
            texts.append(self.tokenizer.decode(row[:n], skip_special_tokens=True))
            if usage is not None:
                usage.append({"completion_tokens": n, "finish_reason": "stop" if stopped else "length"})
        self.stats.samples += len(texts)
        return texts

    # -- the interface -----------------------------------------------------------------------------
    def _stopper(self, cancel: threading.Event | None):
        """``stopping_criteria`` that end generation at the next token once ``cancel`` is set."""
        if cancel is None:
            return {}
        from transformers import StoppingCriteria, StoppingCriteriaList

        torch = self._torch

        class _Stop(StoppingCriteria):
            def __call__(self, input_ids, scores, **kw):
                return torch.full((input_ids.shape[0],), cancel.is_set(), dtype=torch.bool, device=input_ids.device)

        return {"stopping_criteria": StoppingCriteriaList([_Stop()])}

    def generate(
        self,
        requests: list[ChatRequest],
        params: GenerationParams | None = None,
        usage: list | None = None,
        cancel: threading.Event | None = None,
    ) -> list[str]:
        """Answers in request order. ``usage`` (optional, a list to fill) receives one dict per request:
        ``prompt_tokens`` (the real count, image pads expanded), ``completion_tokens`` (through the
        end-of-turn token), ``finish_reason`` ("stop" or "length"). Setting ``cancel`` stops every row
        at its next token (answers are then cut short)."""
        params = params or GenerationParams()
        requests = list(requests)  # sorted by header estimates; each batch's videos are decoded when it is encoded
        if not requests:
            return []
        lengths = [self.estimate_length(r) for r in requests]
        order = sorted(range(len(requests)), key=lambda i: lengths[i])
        out: list[str | None] = [None] * len(requests)
        rows: list[dict | None] = [None] * len(requests)
        with self._lock, self._torch.inference_mode():
            if params.seed is not None:
                self._torch.manual_seed(params.seed)
            for s in range(0, len(order), self.batch_size):
                idx = order[s : s + self.batch_size]
                enc = self.encode([requests[i] for i in idx])
                seq = self.model.generate(**enc, **self._gen_kwargs(params), **self._stopper(cancel))
                counts: list[dict] = []
                real = enc["attention_mask"].sum(dim=1).tolist()  # prompt tokens as the model saw them
                for i, text, c, n in zip(idx, self._finish(seq[:, enc["input_ids"].shape[1] :], counts), counts, real):
                    out[i], rows[i] = text, {"prompt_tokens": int(n), **c}
        if usage is not None:
            usage.extend(rows)
        return out  # type: ignore[return-value]

    def choice_logprobs(self, requests: list[ChatRequest], candidates: list[list[str]]) -> list[list[float]]:
        """Log-probability of each candidate answer (its tokens + ``<|im_end|>``) after each prompt.

        Forced-choice scoring for closed questions: it measures what the model prefers even before
        it has learned to emit well-formed answers (an untrained model's free generation scores 0 %,
        not chance). One teacher-forced forward pass per (request, candidate) pair, batched."""
        requests = [self.clips(r) for r in requests]
        pairs = [(i, c) for i, cands in enumerate(candidates) for c in cands]
        end = "<|im_end|>"
        scores: dict[tuple[int, str], float] = {}
        torch = self._torch
        with self._lock, torch.inference_mode():
            for s in range(0, len(pairs), self.batch_size):
                chunk = pairs[s : s + self.batch_size]
                texts = [self.prompt_text(requests[i]) + c + end for i, c in chunk]
                n_tok = [len(self.tokenizer(c + end, add_special_tokens=False)["input_ids"]) for _, c in chunk]
                enc = self.encode([requests[i] for i, _ in chunk], texts)
                logits = self.model(**enc).logits.float()
                logp = torch.log_softmax(logits[:, :-1], dim=-1)
                ids = enc["input_ids"][:, 1:]
                tok_lp = logp.gather(-1, ids.unsqueeze(-1)).squeeze(-1)  # left padded: answers end every row
                for row, ((i, c), n) in enumerate(zip(chunk, n_tok)):
                    scores[(i, c)] = float(tok_lp[row, -n:].sum())
        return [[scores[(i, c)] for c in cands] for i, cands in enumerate(candidates)]

    def stream(
        self,
        request: ChatRequest,
        params: GenerationParams | None = None,
        usage: dict | None = None,
        cancel: threading.Event | None = None,
    ) -> Iterator[str]:
        """Text deltas of one answer. ``usage`` (optional, a dict to fill) receives ``prompt_tokens``,
        ``completion_tokens`` and ``finish_reason`` once the answer is complete.

        Generation stops at the next token when ``cancel`` is set or when the consumer closes the
        generator (a dropped client): a stopping criterion checks it after every token, so nothing is
        generated for nobody. A cancelled answer ends with ``finish_reason`` ``"cancelled"``."""
        from transformers import TextIteratorStreamer

        params = params or GenerationParams()
        stop = cancel if cancel is not None else threading.Event()
        enc = self.encode([self.clips(request)])
        streamer = TextIteratorStreamer(self.tokenizer, skip_prompt=True, skip_special_tokens=True)
        errors: list[BaseException] = []
        torch = self._torch

        def work():
            try:
                with self._lock, torch.inference_mode():
                    if params.seed is not None:
                        torch.manual_seed(params.seed)
                    seq = self.model.generate(
                        **enc, **self._gen_kwargs(params), streamer=streamer, **self._stopper(stop)
                    )
                    counts: list[dict] = []
                    self._finish(seq[:, enc["input_ids"].shape[1] :], counts)
                    if stop.is_set():
                        counts[0]["finish_reason"] = "cancelled"
                    if usage is not None:
                        usage.update(prompt_tokens=int(enc["attention_mask"][0].sum()), **counts[0])
            except BaseException as e:  # noqa: BLE001 - re-raised in the consumer
                errors.append(e)
                streamer.end()

        t = threading.Thread(target=work, name="geovl-stream", daemon=True)
        t.start()
        finished = False
        try:
            for delta in streamer:
                if delta:
                    yield delta
            finished = True
        finally:
            if not finished:  # closed early (a dropped client): stop at the next token
                stop.set()
            t.join()
        if errors:
            raise errors[0]
