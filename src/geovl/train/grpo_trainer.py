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
  ``_tokenize_prompts`` / ``_generate_single_turn`` hooks; ``share_counts`` counts prompts and distinct prompts.
"""

from __future__ import annotations

import contextlib
import time

import torch
from trl import GRPOTrainer

from .trainer import NonFiniteLoss, PartsAndVisionInputMixin, ProgressFileCallback


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
        out = super()._generate_and_score_completions(inputs)
        dt = time.perf_counter() - t0
        self.timings["generate_s"] += dt
        self.timings["generations"] += int(out["completion_ids"].size(0))
        if self._in_step:
            self._gen_in_step += dt
        return out

    def _tokenize_prompts(self, prompts: list):
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

    def _get_per_token_logps_and_entropies(self, model, input_ids, attention_mask, logits_to_keep, *args, **kwargs):
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
        loss = super().compute_loss(model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch)
        if model.training:
            self.timings["loss_forward_s"] += time.perf_counter() - t0
        if not torch.isfinite(loss.detach()).all():
            raise NonFiniteLoss(
                f"GRPO loss became {loss.detach().float().mean().item()} at step {self.state.global_step + 1}. "
                "Lower the learning rate, raise beta, or use precision=fp32."
            )
        return loss
