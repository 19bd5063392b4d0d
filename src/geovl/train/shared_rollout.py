"""Shared-prompt GRPO rollouts (recipe key ``share_prompts: true``): each group's image is encoded once and its
prompt prefilled once; the G completions then branch from the shared KV cache.

TRL's ``GRPOTrainer`` repeats every prompt ``num_generations`` (G) times in a batch, so the vision tower encodes
the same image G times and the prompt (in remote sensing mostly image tokens) is prefilled G times. Here, with
the trainer's own hooks (:class:`geovl.train.grpo_trainer.GeoVLGRPOTrainer` overrides ``_tokenize_prompts`` and
``_generate_single_turn``; no TRL fork, no patch of transformers):

1. :func:`group_prompts` finds the distinct prompts of the batch (same messages, same image pixels) and
   the row → distinct-prompt index; only the distinct ones are processed (image preprocessing included);
2. :func:`generate_shared` prefills the distinct prompts but their last token (one vision-encoder call over
   the distinct images, ``use_cache``), repeats each row of the KV cache and the Qwen-VL M-RoPE offsets
   (``rope_deltas``) to the rows that share it, and hands the full batch (every row's full prompt) to
   ``model.generate`` with that cache: generation processes the last prompt token of every row and samples on
   with the same generation config, logits processors, stopping criteria and random draws as the unshared path.

The completions, rewards and optimizer step equal the unshared path's within float tolerance with the same
seeds (tests/test_grpo_shared.py, for all three families). The loss forward is TRL's, unchanged (it needs
the vision tower's gradients when the vision side trains).

What cannot share is refused with :class:`SharePromptsUnsupported` naming it (never a silent fallback): vLLM or
transformers continuous-batching generation (they own their cache), tools / environments / ``rollout_func``
(multi-turn rollouts), a ``cache_implementation`` other than the dynamic cache, an attention implementation
other than eager / sdpa (paged and custom kernels cannot repeat their cache per row; flash attention is
unchecked here).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

import torch

from ..errors import RecipeError

# attention implementations checked with a per-row DynamicCache repeated by batch_select_indices (the tests run
# both); flash_attention_2/3 would likely work but are unchecked here (no GPU), so they are refused like the rest
ATTENTION_OK = ("eager", "sdpa")
CACHE_OK = (None, "dynamic")


class SharePromptsUnsupported(RecipeError):
    """``share_prompts: true`` with something that cannot share a prompt's prefill across its group."""


def check_recipe(
    *,
    use_vllm: bool = False,
    continuous_batching: bool = False,
    cache_implementation: str | None = None,
    attn_implementation: str | None = None,
    multi_turn: str | None = None,
) -> None:
    """Refuse ``share_prompts`` with what cannot do it, naming what is missing (before any model loads)."""
    why = None
    if use_vllm:
        why = "use_vllm=true: vLLM owns its KV cache (and caches prefixes itself); use transformers generation (use_vllm=false)"
    elif continuous_batching:
        why = "use_transformers_continuous_batching=true: the paged cache of continuous batching cannot be repeated per row"
    elif cache_implementation not in CACHE_OK:
        why = f"cache_implementation={cache_implementation}: only the dynamic cache can be repeated per row; leave it unset"
    elif attn_implementation is not None and attn_implementation not in ATTENTION_OK:
        why = (
            f"attn_implementation={attn_implementation}: not checked with a KV cache repeated per row "
            f"(accepted: {', '.join(ATTENTION_OK)})"
        )
    elif multi_turn:
        why = f"{multi_turn}: multi-turn rollouts diverge after the first turn"
    if why:
        raise SharePromptsUnsupported(f"share_prompts=true cannot be used with {why}; or set share_prompts=false")


def _image_key(img) -> bytes:
    """Exact identity of an image's content (pixels, size, mode / dtype)."""
    h = hashlib.blake2b(digest_size=16)
    if hasattr(img, "tobytes") and hasattr(img, "mode") and hasattr(img, "size"):  # PIL
        h.update(f"pil:{img.mode}:{img.size}".encode())
        h.update(img.tobytes())
    elif isinstance(img, torch.Tensor):
        t = img.detach().cpu().contiguous()
        h.update(f"tensor:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.numpy().tobytes())
    elif hasattr(img, "tobytes") and hasattr(img, "dtype") and hasattr(img, "shape"):  # numpy
        h.update(f"array:{img.dtype}:{img.shape}".encode())
        h.update(img.tobytes())
    elif isinstance(img, (bytes, str)):
        h.update(img.encode() if isinstance(img, str) else img)
    else:
        raise SharePromptsUnsupported(
            f"share_prompts=true cannot compare prompt images of type {type(img).__name__} "
            "(PIL images, numpy arrays, tensors, bytes or paths); set share_prompts=false"
        )
    return h.digest()


def _prompt_key(prompt) -> str:
    def enc(x):
        if isinstance(x, dict):
            return {k: (_image_key(v).hex() if k in ("image", "video") else enc(v)) for k, v in sorted(x.items())}
        if isinstance(x, (list, tuple)):
            return [enc(v) for v in x]
        return x

    return json.dumps(enc(prompt), ensure_ascii=False, sort_keys=True, default=repr)


def group_prompts(prompts: list) -> tuple[list[int], list[int]]:
    """(the first row of each distinct prompt, in order; for every row the index of its distinct prompt)."""
    first: dict[str, int] = {}
    unique, inverse = [], []
    for i, p in enumerate(prompts):
        k = _prompt_key(p)
        if k not in first:
            first[k] = len(unique)
            unique.append(i)
        inverse.append(first[k])
    return unique, inverse


@dataclass
class SharedBatch:
    """The distinct prompts of one generation batch: their token ids and multimodal fields, and the row map."""

    prompt_ids: list[list[int]]
    multimodal_fields: dict
    inverse: list[int]


def _pad_left(rows: list, value: int, multiple: int | None) -> torch.Tensor:
    from trl.trainer.utils import pad

    return pad(
        [torch.as_tensor(r) for r in rows], padding_value=value, padding_side="left", pad_to_multiple_of=multiple
    )


def rope_modules(model) -> list:
    """The modules that keep Qwen-VL's M-RoPE offsets between generation steps (``rope_deltas``)."""
    return [m for m in model.modules() if hasattr(m, "get_rope_index") and hasattr(m, "rope_deltas")]


def check_model(model) -> None:
    """Refuse a loaded model whose attention implementation cannot repeat its cache per row."""
    impl = getattr(getattr(model, "config", None), "_attn_implementation", None)
    if impl is not None and impl not in ATTENTION_OK:
        check_recipe(attn_implementation=impl)


def generate_shared(trainer, shared: SharedBatch, pad_token_id: int, eos_token_ids, generate_model) -> list[list[int]]:
    """Completion token ids (EOS included, nothing after it) for every row of the batch, sampled from the
    shared prefill. ``generate_model`` is a context manager giving the unwrapped model (the trainer's)."""
    from transformers import DynamicCache, Trainer

    multiple = trainer.pad_to_multiple_of
    ids_u = _pad_left(shared.prompt_ids, pad_token_id, multiple)
    mask_u = _pad_left([[1] * len(r) for r in shared.prompt_ids], 0, multiple)
    inv = torch.tensor(shared.inverse, dtype=torch.long)
    if int(mask_u[:, -1].min()) != 1:
        raise RuntimeError("share_prompts: prompts must end in a real token (left padding)")
    per_image, per_row = {}, {}
    for k, v in shared.multimodal_fields.items():
        if isinstance(v, torch.Tensor):
            per_image[k] = v  # pixel_values, image_grid_thw: over the distinct images only
        elif isinstance(v, list) and v and isinstance(v[0], list):
            per_row[k] = _pad_left(v, 0, multiple)  # e.g. mm_token_type_ids: per token
        else:
            per_image[k] = torch.as_tensor(v)
    # the distinct prompts without their last token (always text: the generation prompt) ...
    prefill = {"input_ids": ids_u[:, :-1], "attention_mask": mask_u[:, :-1], **per_image}
    prefill.update({k: v[:, :-1] for k, v in per_row.items()})
    # ... and every row's full prompt: generation runs the last token of each row on the repeated cache
    full = {"input_ids": ids_u[inv], "attention_mask": mask_u[inv], **{k: v[inv] for k, v in per_row.items()}}
    prefill = Trainer._prepare_inputs(trainer, prefill)
    full = Trainer._prepare_inputs(trainer, full)
    with generate_model() as model:
        check_model(model)
        cache = DynamicCache(config=model.config)
        model(**prefill, past_key_values=cache, use_cache=True, logits_to_keep=1)
        rows = inv.to(full["input_ids"].device)
        if not torch.equal(rows, torch.arange(len(rows), device=rows.device)):
            cache.batch_select_indices(rows)
            for m in rope_modules(model):
                if m.rope_deltas is not None:
                    m.rope_deltas = m.rope_deltas[rows.to(m.rope_deltas.device)]
        out = model.generate(**full, past_key_values=cache, generation_config=trainer.generation_config)
    completion = out[:, full["input_ids"].size(1) :].cpu()
    eos = torch.isin(completion, torch.tensor(list(eos_token_ids)))
    result = []
    for row, hit in zip(completion.tolist(), eos.tolist()):
        end = hit.index(True) + 1 if True in hit else len(row)
        result.append(row[:end])
    return result


# -- the loss forward: each distinct image encoded once (with gradients), its features given to every row --------


def distinct_images(pixel_values: torch.Tensor, image_grid_thw: torch.Tensor) -> tuple[list[int], list[int]]:
    """(the first image of each distinct image, for every image the index of its distinct image): images are
    the same when their grids and patch rows are equal (compared exactly)."""
    rows = image_grid_thw.prod(-1).tolist()
    starts = [0]
    for r in rows[:-1]:
        starts.append(starts[-1] + r)
    firsts: list[int] = []
    inverse: list[int] = []
    buckets: dict[tuple, list[int]] = {}
    for i, (s, r) in enumerate(zip(starts, rows)):
        block = pixel_values[s : s + r]
        key = (tuple(image_grid_thw[i].tolist()), float(block.double().sum()))
        for j in buckets.get(key, []):
            f = firsts[j]
            if torch.equal(block, pixel_values[starts[f] : starts[f] + rows[f]]):
                inverse.append(j)
                break
        else:
            buckets.setdefault(key, []).append(len(firsts))
            inverse.append(len(firsts))
            firsts.append(i)
    return firsts, inverse


def _select(enc, index: list[int]):
    """The encoder output for the images ``index`` (of the distinct ones): every per-image field indexed
    (``pooler_output``; Qwen3-VL's ``deepstack_features`` per layer); nothing else is read by the model."""
    out = {"pooler_output": tuple(enc.pooler_output[j] for j in index)}
    deep = getattr(enc, "deepstack_features", None)
    if deep is not None:
        out["deepstack_features"] = [tuple(layer[j] for j in index) for layer in deep]
    return type(enc)(**out)


class SharedImageFeatures:
    """Stands in for the model in TRL's loss forward (``_get_per_token_logps_and_entropies`` only calls it): each
    chunk's ``pixel_values`` are replaced by the features of its images, taken from one vision-encoder call over
    the distinct images of the whole batch (gradients flow back through the shared features: the same sum as
    encoding every copy)."""

    def __init__(self, model, enc, inverse: list[int]):
        self.model, self.enc, self.inverse, self.cursor = model, enc, inverse, 0

    def __call__(self, *args, pixel_values=None, image_grid_thw=None, **kwargs):
        if pixel_values is not None and image_grid_thw is not None:
            n = int(image_grid_thw.shape[0])
            index = self.inverse[self.cursor : self.cursor + n]
            self.cursor += n
            kwargs["mm_encoder_outputs"] = {"image": _select(self.enc, index)}
        return self.model(*args, image_grid_thw=image_grid_thw, **kwargs)


def encode_distinct(model, pixel_values: torch.Tensor, image_grid_thw: torch.Tensor, firsts: list[int]):
    """One vision-encoder call over the distinct images (``get_image_features`` of the model)."""
    rows = image_grid_thw.prod(-1).tolist()
    starts = [0]
    for r in rows[:-1]:
        starts.append(starts[-1] + r)
    pv = torch.cat([pixel_values[starts[i] : starts[i] + rows[i]] for i in firsts])
    return model.get_image_features(pixel_values=pv, image_grid_thw=image_grid_thw[firsts], return_dict=True)
