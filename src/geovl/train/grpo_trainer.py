"""A thin subclass of ``trl.GRPOTrainer`` (no fork, no monkey patches) and its progress callback.

What it adds to TRL's trainer:
- as SFT (:class:`geovl.train.trainer.PartsAndVisionInputMixin`): optimizer parameter groups per model
  part, and the vision input (e.g. a spectral projector) saved beside the weights and restored on resume;
- a stop on NaN/inf loss naming the step (:class:`geovl.train.trainer.NonFiniteLoss`);
- ``real_tokens`` (prompt + completion tokens seen, from TRL's counter) for the progress file;
- timers (``timings``, also in ``train_summary.json``): seconds spent generating
  (``_generate_and_score_completions``: sampling + rewards + reference/old-policy forwards), in the
  loss forward (``compute_loss``) and in the rest of ``training_step`` (the backward pass);
  optimizer steps and logging are the remainder of the train runtime (``bench/bench_grpo.py``);
- ``share_prompts=True``: each distinct prompt of a batch is tokenized, image-encoded and prefilled once and
  its G completions branch from the shared KV cache (:mod:`geovl.train.shared_rollout`), through TRL's
  ``_tokenize_prompts`` / ``_generate_single_turn`` hooks; ``share_counts`` counts prompts and distinct prompts;
- video prompts (rows with ``videos``: sampled clips, see :mod:`geovl.train.grpo_data`): TRL 1.16 tokenizes, generates
  and scores with image inputs only. For a batch with a video, TRL is handed no images and ``_tokenize_prompts``
  calls the processor per prompt with its images and its clips (``do_sample_frames=False`` and the clips' sample
  times, as SFT and the engine), so generation sees ``pixel_values_videos`` / ``video_grid_thw`` (Qwen2.5-VL:
  ``second_per_grid_ts``) and the prompt ids hold every ``<|video_pad|>``; each row's image and video inputs ride
  in the generation batch (``video_inputs``, one entry per row, shuffled and split with it) and every loss,
  old-policy and reference forward (``_get_per_token_logps_and_entropies``) gets them, with ``mm_token_type_ids``
  rebuilt from the prompt ids. Batches without a video take TRL's path unchanged. ``share_prompts`` does not take
  video prompts (a :class:`~geovl.errors.GeoVLError`, see :data:`NO_SHARED_VIDEO`).
"""

from __future__ import annotations

import contextlib
import time

import torch
from trl import GRPOTrainer

from ..errors import GeoVLError
from .trainer import NonFiniteLoss, PartsAndVisionInputMixin, ProgressFileCallback

# per-row visual model inputs, concatenated in row order as the SFT collator does (second_per_grid_ts: Qwen2.5-VL)
VISUAL_KEYS = ("pixel_values", "image_grid_thw", "pixel_values_videos", "video_grid_thw", "second_per_grid_ts")
NO_SHARED_VIDEO = (
    "share_prompts=true does not take video prompts: shared rollouts (geovl.train.shared_rollout) encode and "
    "prefill images only (pixel_values / image_grid_thw), not pixel_values_videos / video_grid_thw. Set "
    "share_prompts=false for data with video samples, or leave the video samples out / "
    "share_prompts 暂不支持视频提示：请设 share_prompts=false"
)


def mm_token_types(ids: torch.Tensor, image_pad: int | None, video_pad: int | None) -> torch.Tensor:
    """``mm_token_type_ids`` of token ids as the Qwen-VL processors make them (M-RoPE reads them): 1 on image pads,
    2 on video pads, 0 elsewhere."""
    mm = torch.zeros_like(ids)
    if image_pad is not None:
        mm[ids == image_pad] = 1
    if video_pad is not None:
        mm[ids == video_pad] = 2
    return mm


class GRPOProgressCallback(ProgressFileCallback):
    """``progress.jsonl`` lines as in SFT, plus TRL's GRPO metrics: the mean of every reward function
    (``rewards/<name>/mean``), the total ``reward`` and its std, completion lengths, KL and entropy
    (and the ``eval_`` versions of the rewards when ``eval_data`` is set)."""

    FORWARD_PREFIXES = (
        "rewards/", "reward", "completions/mean_length", "completions/clipped_ratio", "kl", "entropy", "frac_reward_zero_std",
        "eval_rewards/", "eval_reward",
    )  # fmt: skip


class GeoVLGRPOTrainer(PartsAndVisionInputMixin, GRPOTrainer):
    def __init__(self, *args, param_groups_fn=None, family=None, share_prompts=False, **kwargs):
        self._param_groups_fn = param_groups_fn
        self.share_prompts = bool(share_prompts)
        self._shared_batch = None
        self.share_counts = {"rows": 0, "distinct": 0, "loss_images": 0, "loss_images_encoded": 0}
        self.timings = {"generate_s": 0.0, "loss_forward_s": 0.0, "train_step_s": 0.0, "generations": 0, "steps": 0}
        self._in_step = False
        self._batch_visuals = None  # (images, clips) of each row of the batch being generated (None: no video in it)
        self._video_rows = None  # per row of a batch with videos: its visual inputs (dict of VISUAL_KEYS tensors)
        super().__init__(*args, **kwargs)
        if self.accelerator.num_processes > 1:
            # TRL 1.16 gathers the prompt images for its logs (gather_object) only on ranks whose batch has images: with
            # a text-only batch on another rank the ranks wait in different collectives for ever (measured here under
            # ZeRO-2/3: step 2 hung). The images are only logged, so multi-process runs do not log them.
            self.log_multimodal = False
        if self.ref_model is not None:
            # TRL loads a full fine-tune's reference model from its folder without our vision input (e.g. a spectral
            # projector): give it a frozen copy of the starting one, so the KL term compares the policy with the
            # model it started as (RGB: nothing to copy)
            self.vision_input().copy_to(self.accelerator.unwrap_model(self.ref_model), family, self.processing_class)

        if self.share_prompts:
            from . import shared_rollout

            multi = [n for n in ("tools", "environment_factories", "rollout_func") if getattr(self, n, None)]
            shared_rollout.check_recipe(
                use_vllm=self.use_vllm,
                continuous_batching=self.use_transformers_continuous_batching,
                cache_implementation=getattr(self.generation_config, "cache_implementation", None),
                multi_turn=multi[0] if multi else None,
            )
            shared_rollout.check_model(self.accelerator.unwrap_model(self.model))

    @property
    def real_tokens(self) -> int:
        return int(getattr(self.state, "num_input_tokens_seen", 0) or 0)

    def _generate_and_score_completions(self, inputs):
        t0 = time.perf_counter()
        videos = [list(x.get("videos") or []) for x in inputs]
        if any(videos):  # TRL sees no images here: this trainer feeds each row's images and clips itself
            self._batch_visuals = [(list(x.get("images") or []), v) for x, v in zip(inputs, videos)]
            inputs = [{**x, "images": []} for x in inputs]
        try:
            out = super()._generate_and_score_completions(inputs)
            if self._batch_visuals is not None:
                out["video_inputs"] = self._video_rows  # a list: TRL shuffles and splits it with the rows
        finally:
            self._batch_visuals = self._video_rows = None
        dt = time.perf_counter() - t0
        self.timings["generate_s"] += dt
        self.timings["generations"] += int(out["completion_ids"].size(0))
        if self._in_step:
            self._gen_in_step += dt
        return out

    def _tokenize_prompts(self, prompts: list):
        if self._batch_visuals is not None:
            if self.share_prompts:
                raise GeoVLError(NO_SHARED_VIDEO)
            return self._tokenize_video_prompts(prompts, self._batch_visuals)
        if not self.share_prompts:
            return super()._tokenize_prompts(prompts)
        from .shared_rollout import SharedBatch, group_prompts

        unique, inverse = group_prompts(prompts)
        ids, images, fields = super()._tokenize_prompts([prompts[i] for i in unique])
        self._shared_batch = SharedBatch([list(x) for x in ids], fields, inverse)
        self.share_counts["rows"] += len(prompts)
        self.share_counts["distinct"] += len(unique)
        # every row gets its prompt's ids (and images); the multimodal fields stay per distinct prompt: they only
        # reach _generate_single_turn below
        ids = [list(ids[j]) for j in inverse]
        images = None if images is None else [images[j] for j in inverse]
        return ids, images, fields

    def _generate_single_turn(self, prompt_ids, images, multimodal_fields, num_generations, has_tool_images=False):
        shared, self._shared_batch = self._shared_batch, None
        if shared is None:
            return super()._generate_single_turn(
                prompt_ids, images, multimodal_fields, num_generations, has_tool_images
            )
        from trl.models import unwrap_model_for_generation

        from .shared_rollout import generate_shared

        @contextlib.contextmanager
        def generation_model():  # the contexts TRL's own transformers generation runs in
            with (
                unwrap_model_for_generation(
                    self.model_wrapped,
                    self.accelerator,
                    gather_deepspeed3_params=self.args.ds3_gather_for_generation,
                    generation_kwargs=self.generation_kwargs,
                    gradient_checkpointing_kwargs=self.args.gradient_checkpointing_kwargs,
                ) as model,
                torch.no_grad(),
                self._dist.summon_full_params(self.model_wrapped, recurse=False),
            ):
                yield model

        completions = generate_shared(self, shared, self._tokenizer.pad_token_id, self.eos_token_ids, generation_model)
        return completions, None

    def _tokenize_video_prompts(self, prompts: list, visuals: list):
        """TRL's ``_tokenize_prompts`` for a batch with videos: one processor call per prompt with its images and its
        sampled clips (nothing re-sampled); the prompt ids hold every image's and video's tokens. Remembers each
        row's visual inputs for the forwards that follow; TRL gets no images (it would call the processor on the
        prompts without their videos)."""
        from ..models.vision_input import video_processor_kwargs

        proc = self.processing_class
        prompt_ids, rows, mm = [], [], []
        fields: dict[str, list] = {}
        for prompt, (imgs, clips) in zip(prompts, visuals, strict=True):
            text = proc.apply_chat_template(
                prompt,
                chat_template=self.chat_template,
                tokenize=False,
                add_generation_prompt=True,
                **self.chat_template_kwargs,
            )
            enc = proc(text=[text], images=imgs or None, return_tensors="pt", **video_processor_kwargs(clips))
            prompt_ids.append(enc["input_ids"][0].tolist())
            own = enc.get("mm_token_type_ids")  # the processor's, where it gives them (equal: tests/test_grpo_video.py)
            mm.append((own[0] if own is not None else self._mm_types(enc["input_ids"][0])).tolist())
            row = {k: torch.as_tensor(enc[k]) for k in VISUAL_KEYS if k in enc}
            for k, v in row.items():
                fields.setdefault(k, []).append(v)
            rows.append(row)
        self._video_rows = rows
        multimodal_fields = {k: torch.cat(v) for k, v in fields.items()}
        multimodal_fields["mm_token_type_ids"] = mm  # per token: TRL left-pads it with the ids
        return prompt_ids, None, multimodal_fields

    def _mm_types(self, ids: torch.Tensor) -> torch.Tensor:
        return mm_token_types(ids, self._image_pad_token_id, self._video_pad_token_id)

    def _logps_with_videos(
        self,
        model,
        input_ids,
        attention_mask,
        logits_to_keep,
        rows,
        batch_size=None,
        compute_entropy=False,
        compute_aux_loss=False,
        mm_token_type_ids=None,
        **others,
    ):
        """TRL's forward, chunked by ``batch_size`` as TRL chunks it, for a batch with videos: each chunk's rows'
        images and videos reach the model (:class:`_WithVisuals`), with ``mm_token_type_ids`` built from the prompt
        ids (the completion is text whatever ids were sampled)."""
        extra = [k for k, v in others.items() if v is not None and k != "num_images"]
        if extra:
            raise GeoVLError(f"GRPO with video prompts takes Qwen-VL inputs only; got {', '.join(sorted(extra))}")
        n = input_ids.size(0)
        if len(rows) != n:
            raise RuntimeError(f"visual inputs for {len(rows)} rows, batch of {n}")
        bs = batch_size or n
        mm = self._mm_types(input_ids)
        mm[:, input_ids.size(1) - logits_to_keep :] = 0
        logps, ents, aux = [], [], []
        for a in range(0, n, bs):
            b = min(a + bs, n)
            visual = {}
            for k in VISUAL_KEYS:
                parts = [r[k] for r in rows[a:b] if k in r]
                if parts:
                    visual[k] = torch.cat(parts).to(input_ids.device)
            lp, en, ax = super()._get_per_token_logps_and_entropies(
                _WithVisuals(model, visual) if visual else model,
                input_ids[a:b],
                attention_mask[a:b],
                logits_to_keep,
                compute_entropy=compute_entropy,
                compute_aux_loss=compute_aux_loss,
                mm_token_type_ids=mm[a:b],
            )
            logps.append(lp)
            ents.append(en)
            aux.append(ax)
        return (
            torch.cat(logps),
            torch.cat(ents) if compute_entropy else None,
            torch.stack(aux).mean() if compute_aux_loss else None,
        )

    def _get_per_token_logps_and_entropies(self, model, input_ids, attention_mask, logits_to_keep, *args, **kwargs):
        if self._video_rows is not None:
            return self._logps_with_videos(
                model, input_ids, attention_mask, logits_to_keep, self._video_rows, *args, **kwargs
            )
        pv, grid, n_img = kwargs.get("pixel_values"), kwargs.get("image_grid_thw"), kwargs.get("num_images")
        others = ("pixel_attention_mask", "spatial_shapes", "num_tiles", "image_sizes", "image_position_ids")
        if (
            not self.share_prompts
            or args
            or pv is None
            or grid is None
            or n_img is None
            or any(kwargs.get(k) is not None for k in others)
        ):
            return super()._get_per_token_logps_and_entropies(
                model, input_ids, attention_mask, logits_to_keep, *args, **kwargs
            )
        from .shared_rollout import SharedImageFeatures, distinct_images, encode_distinct

        firsts, inverse = distinct_images(pv, grid)
        if len(firsts) == len(inverse):  # nothing to share
            return super()._get_per_token_logps_and_entropies(
                model, input_ids, attention_mask, logits_to_keep, *args, **kwargs
            )
        with self.accelerator.autocast():
            enc = encode_distinct(self.accelerator.unwrap_model(model), pv, grid, firsts)
        self.share_counts["loss_images"] += len(inverse)
        self.share_counts["loss_images_encoded"] += len(firsts)
        return super()._get_per_token_logps_and_entropies(
            SharedImageFeatures(model, enc, inverse), input_ids, attention_mask, logits_to_keep, **kwargs
        )

    def training_step(self, model, inputs, num_items_in_batch=None):
        self._in_step, self._gen_in_step = True, 0.0
        t0 = time.perf_counter()
        try:
            return super().training_step(model, inputs, num_items_in_batch)
        finally:
            self.timings["train_step_s"] += time.perf_counter() - t0 - self._gen_in_step
            self.timings["steps"] += 1
            self._in_step = False

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        t0 = time.perf_counter()
        self._video_rows = inputs.get("video_inputs")  # this step's rows' visual inputs (None: no video in the batch)
        try:
            loss = super().compute_loss(
                model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch
            )
        finally:
            self._video_rows = None
        if model.training:
            self.timings["loss_forward_s"] += time.perf_counter() - t0
        if not torch.isfinite(loss.detach()).all():
            raise NonFiniteLoss(
                f"GRPO loss became {loss.detach().float().mean().item()} at step {self.state.global_step + 1}. "
                "Lower the learning rate, raise beta, or use precision=fp32."
            )
        return loss


class _WithVisuals:
    """Stands in for the model in TRL's forward (``_get_per_token_logps_and_entropies`` only calls it): adds one
    chunk's image and video inputs (:data:`VISUAL_KEYS`) to the call."""

    def __init__(self, model, visual: dict):
        self.model, self.visual = model, visual

    def __call__(self, *args, **kwargs):
        return self.model(*args, **kwargs, **self.visual)
