"""A thin subclass of ``trl.GRPOTrainer`` (no fork, no monkey patches) and its progress callback.

What it adds to TRL's trainer:
- optimizer parameter groups per model part (own learning rates for vision / merger / LLM), as SFT;
- a stop on NaN/inf loss naming the step (:class:`geovl.train.trainer.NonFiniteLoss`);
- ``real_tokens`` (prompt + completion tokens seen, from TRL's counter) for the progress file;
- timers (``timings``, also in ``train_summary.json``): seconds spent generating
  (``_generate_and_score_completions``: sampling + rewards + reference/old-policy forwards), in the
  loss forward (``compute_loss``) and in the rest of ``training_step`` (the backward pass);
  optimizer steps and logging are the remainder of the train runtime (``bench/bench_grpo.py``).
"""

from __future__ import annotations

import time

import torch
from trl import GRPOTrainer

from .trainer import NonFiniteLoss, ProgressFileCallback


class GRPOProgressCallback(ProgressFileCallback):
    """``progress.jsonl`` lines as in SFT, plus TRL's GRPO metrics: the mean of every reward function
    (``rewards/<name>/mean``), the total ``reward`` and its std, completion lengths, KL and entropy
    (and the ``eval_`` versions of the rewards when ``eval_data`` is set)."""

    FORWARD_PREFIXES = (
        "rewards/", "reward", "completions/mean_length", "completions/clipped_ratio", "kl", "entropy", "frac_reward_zero_std",
        "eval_rewards/", "eval_reward",
    )  # fmt: skip


class GeoVLGRPOTrainer(GRPOTrainer):
    def __init__(self, *args, param_groups_fn=None, **kwargs):
        self._param_groups_fn = param_groups_fn
        self.timings = {"generate_s": 0.0, "loss_forward_s": 0.0, "train_step_s": 0.0, "generations": 0, "steps": 0}
        self._in_step = False
        super().__init__(*args, **kwargs)

    @property
    def real_tokens(self) -> int:
        return int(getattr(self.state, "num_input_tokens_seen", 0) or 0)

    def create_optimizer(self, model=None):
        if self.optimizer is None and self._param_groups_fn is not None:
            opt_model = self.model if model is None else model
            groups = self._param_groups_fn(opt_model)
            cls, kwargs = self.get_optimizer_cls_and_kwargs(self.args, opt_model)
            kwargs.pop("params", None)
            kwargs.pop("lr", None)  # each group has its own lr
            for g in groups:
                g.pop("name", None)
            self.optimizer = cls(groups, lr=self.args.learning_rate, **kwargs)
            return self.optimizer
        return super().create_optimizer(model)

    def _generate_and_score_completions(self, inputs):
        t0 = time.perf_counter()
        out = super()._generate_and_score_completions(inputs)
        dt = time.perf_counter() - t0
        self.timings["generate_s"] += dt
        self.timings["generations"] += int(out["completion_ids"].size(0))
        if self._in_step:
            self._gen_in_step += dt
        return out

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
