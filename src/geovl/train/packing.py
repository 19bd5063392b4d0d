"""Packed SFT (recipe key ``packing: true``): several samples in one row, no padding, no attention across samples.

How a packed step is built and why it equals running each sample alone:

- **Rows.** :func:`pack_rows` cuts a seeded shuffle of the samples into rows of at most ``budget`` tokens (exact
  lengths from the dataset pre-pass; greedy in that order). Each training step is one row (batch dimension 1), so
  there is no padding at all. The row composition is fixed for the run (seeded); the row order is shuffled per
  epoch by the Trainer's sampler, so a resumed run replays the same rows.
- **Positions, per sample.** The collator (:class:`geovl.train.data.SFTCollator`) concatenates the samples and
  passes ``packed_seq_lens``; a forward pre-hook on the model's inner ``Qwen*VLModel`` (:func:`enable_packing`)
  turns it into ``position_ids`` of shape ``(4, 1, L)``: row 0 the 2-D text positions ``0..len-1`` restarting at
  every sample, rows 1–3 the multimodal rotary (t, h, w) positions from the model's **own**
  ``get_rope_index`` called on each sample separately (its images and videos only, with Qwen2.5-VL's
  ``second_per_grid_ts``) — never across samples.
- **Attention, block-diagonal.** With ``attention_mask=None`` and 4-row positions, transformers 5.23's text model of
  all three families (Qwen2-VL, Qwen2.5-VL, Qwen3-VL) hands row 0 to ``create_causal_mask``, whose
  ``find_packed_sequence_indices`` starts a new sequence wherever the position does not step by +1: the mask is
  causal within each sample and closed between samples (eager and sdpa build it as a 4-D mask).
  The hook also sets ``use_cache=False``: transformers looks for packed sequences only when there is no KV cache.
- **Labels.** Each sample keeps its assistant-only labels; the first label of every sample is -100 (it always is:
  a sample starts with ``<|im_start|>``), so the last token of one sample never learns to predict the next sample.
- The vision towers already encode each image on its own (per-image ``cu_seqlens``).

What cannot pack is refused (:class:`PackingError`) naming what is missing — never a silent fallback: a model
family outside the three, an attention implementation other than eager/sdpa (the two checked here by
``tests/test_train_packing.py``), hyperspectral runs (the projector path is not checked with packed rows).
"""

from __future__ import annotations

import torch

from ..errors import GeoVLError

PACKABLE_FAMILIES = ("qwen2_vl", "qwen2_5_vl", "qwen3_vl")
PACKABLE_ATTENTION = ("eager", "sdpa")


class PackingError(GeoVLError, ValueError):
    """A recipe asks for packing with a model, attention implementation or input the packed path cannot do."""


def _hf_model(model):
    """The transformers ``...ForConditionalGeneration`` under PEFT / DDP wrappers."""
    m = getattr(model, "module", model)
    if hasattr(m, "get_base_model"):
        m = m.get_base_model()
    return m


def _inner(model):
    """The ``Qwen*VLModel`` that owns ``get_rope_index`` and calls the language model (``model`` itself if it is one)."""
    if hasattr(model, "get_rope_index") and hasattr(model, "language_model"):
        return model
    inner = getattr(_hf_model(model), "model", None)
    if inner is None or not hasattr(inner, "get_rope_index"):
        raise PackingError(
            f"{type(_hf_model(model)).__name__}: no inner model with get_rope_index (multimodal rotary "
            "positions per sample): packing is not possible for this model"
        )
    return inner


def check_packable(model, spectral: bool = False) -> None:
    """Refuse (:class:`PackingError`) what the packed path cannot do; return None when it can."""
    hf = _hf_model(model)
    mt = getattr(hf.config, "model_type", None)
    if mt not in PACKABLE_FAMILIES:
        raise PackingError(
            f"packing=true: model type {mt!r} is not one of {PACKABLE_FAMILIES} (per-sample multimodal "
            "positions and the packed attention mask are checked only for these)",
            hint="set packing=false for this model",
        )
    _inner(model)
    impl = getattr(hf.config, "_attn_implementation", None)
    if impl not in PACKABLE_ATTENTION:
        raise PackingError(
            f"packing=true: attention implementation {impl!r} is not one of {PACKABLE_ATTENTION}, "
            "the ones whose block-diagonal mask for packed rows is tested here",
            hint="set attn_implementation=sdpa (or eager), or packing=false",
        )
    if spectral:
        raise PackingError(
            "packing=true with spectral=true: packed rows are not checked through the spectral projector",
            hint="set packing=false for hyperspectral training",
        )


def pack_rows(lengths: list[int], budget: int, seed: int) -> list[list[int]]:
    """Sample indices in rows of at most ``budget`` tokens: a seeded shuffle filled greedily in order.

    Every sample is in exactly one row; a sample longer than ``budget`` is refused (:class:`PackingError`)."""
    longest = max(lengths, default=0)
    if longest > budget:
        raise PackingError(
            f"packing_tokens={budget} is below the longest sample ({longest} tokens)",
            hint="raise packing_tokens, or set max_length to drop longer samples",
        )
    g = torch.Generator()
    g.manual_seed(int(seed))
    rows: list[list[int]] = []
    cur: list[int] = []
    used = 0
    for i in torch.randperm(len(lengths), generator=g).tolist():
        if cur and used + lengths[i] > budget:
            rows.append(cur)
            cur, used = [], 0
        cur.append(i)
        used += lengths[i]
    if cur:
        rows.append(cur)
    return rows


def default_budget(lengths: list[int], batch_size: int) -> int:
    """Tokens per packed row when the recipe does not say: ``batch_size`` samples of mean length (so a step holds
    about as many samples as an unpacked batch), at least the longest sample."""
    if not lengths:
        return 1
    return max(max(lengths), round(batch_size * sum(lengths) / len(lengths)))


class PackedSFTDataset(torch.utils.data.Dataset):
    """Rows of an :class:`~geovl.train.data.SFTDataset`: item ``r`` is ``{"packed": [encoded samples of row r]}``."""

    def __init__(self, ds, budget: int, seed: int = 0):
        self.ds = ds
        self.budget = int(budget)
        self.rows = pack_rows(list(ds.lengths), self.budget, seed)
        self.lengths = [sum(ds.lengths[i] for i in r) for r in self.rows]  # tokens per row (no padding)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, r: int) -> dict:
        return {"packed": [self.ds[i] for i in self.rows[r]]}

    def summary(self) -> dict:
        n = len(self.rows)
        return {
            "rows": n,
            "samples": sum(len(r) for r in self.rows),
            "budget_tokens": self.budget,
            "mean_row_tokens": round(sum(self.lengths) / max(n, 1), 1),
            "max_row_tokens": max(self.lengths, default=0),
        }


def _videos_in(n_tokens: int, video_grid_thw: torch.Tensor | None, first: int, merge: int) -> int:
    """How many videos from ``first`` on own exactly ``n_tokens`` video tokens (one segment's); a video's tokens
    are its grid's product over ``merge``² (Qwen3-VL splits them by timestamps, so spans cannot be counted)."""
    k, total = 0, 0
    while total < n_tokens:
        if video_grid_thw is None or first + k >= video_grid_thw.shape[0]:
            raise ValueError(f"packed row: a sample has {n_tokens} video tokens but the video grids run out")
        total += int(video_grid_thw[first + k].prod()) // merge
        k += 1
    if total != n_tokens:
        raise ValueError(f"packed row: a sample's {n_tokens} video tokens do not match its video grids ({total})")
    return k


def packed_position_ids(
    model,
    input_ids: torch.Tensor,
    mm_token_type_ids: torch.Tensor | None,
    image_grid_thw: torch.Tensor | None,
    seq_lens,
    video_grid_thw: torch.Tensor | None = None,
    second_per_grid_ts: torch.Tensor | None = None,
) -> torch.Tensor:
    """``(4, 1, L)`` positions of a packed row: text positions restarting per sample, then the model's own
    multimodal rotary positions of each sample computed on that sample alone (its images and videos)."""
    inner = _inner(model)
    ids = input_ids[0]
    mm = mm_token_type_ids[0] if mm_token_type_ids is not None else torch.zeros_like(ids)
    lens = [int(x) for x in seq_lens]
    if sum(lens) != ids.shape[0]:
        raise ValueError(f"packed_seq_lens sum to {sum(lens)} but the row has {ids.shape[0]} tokens")
    merge = int(inner.config.vision_config.spatial_merge_size) ** 2
    parts, start, img, vid = [], 0, 0, 0
    for n in lens:
        seg_ids, seg_mm = ids[start : start + n], mm[start : start + n]
        is_img = (seg_mm == 1).long()
        n_img = int(is_img[0]) + int(((is_img[1:] - is_img[:-1]) == 1).sum()) if n else 0
        grid = image_grid_thw[img : img + n_img] if n_img else None
        kw = {}
        n_vid_tokens = int((seg_mm == 2).sum())
        n_vid = _videos_in(n_vid_tokens, video_grid_thw, vid, merge) if n_vid_tokens else 0
        if n_vid:
            kw["video_grid_thw"] = video_grid_thw[vid : vid + n_vid]
            if second_per_grid_ts is not None:
                kw["second_per_grid_ts"] = second_per_grid_ts[vid : vid + n_vid]
        mrope, _ = inner.get_rope_index(seg_ids[None], seg_mm[None], image_grid_thw=grid, **kw)
        text = torch.arange(n, device=ids.device, dtype=mrope.dtype).view(1, 1, n)
        parts.append(torch.cat([text, mrope], dim=0))
        start, img, vid = start + n, img + n_img, vid + n_vid
    if image_grid_thw is not None and img != image_grid_thw.shape[0]:
        raise ValueError(f"packed row has {img} image spans but {image_grid_thw.shape[0]} image grids")
    if video_grid_thw is not None and vid != video_grid_thw.shape[0]:
        raise ValueError(f"packed row has {vid} videos' tokens but {video_grid_thw.shape[0]} video grids")
    return torch.cat(parts, dim=2)


def _pre_hook(module, args, kwargs):
    lens = kwargs.pop("packed_seq_lens", None)
    if lens is None:
        return None
    if kwargs.get("attention_mask") is not None:
        raise ValueError("a packed row must come without attention_mask (the mask is built from the positions)")
    if kwargs.get("input_ids") is None or kwargs["input_ids"].shape[0] != 1:
        raise ValueError("a packed row must be one row of input_ids")
    # transformers builds the packed (block-diagonal) mask only without a KV cache; a packed row is never generation
    kwargs["use_cache"] = False
    kwargs["position_ids"] = packed_position_ids(
        module,
        kwargs["input_ids"],
        kwargs.get("mm_token_type_ids"),
        kwargs.get("image_grid_thw"),
        lens,
        kwargs.get("video_grid_thw"),
        kwargs.get("second_per_grid_ts"),
    )
    return args, kwargs


def enable_packing(model) -> None:
    """Let ``model`` take packed rows: batches with ``packed_seq_lens`` get per-sample positions (idempotent)."""
    inner = _inner(model)
    if getattr(inner, "_geovl_packing_hook", None) is None:
        inner._geovl_packing_hook = inner.register_forward_pre_hook(_pre_hook, with_kwargs=True)
