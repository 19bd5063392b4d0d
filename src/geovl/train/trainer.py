"""A thin subclass of ``transformers.Trainer`` (no fork, no monkey patches) and its callbacks.

What it adds:
- optimizer parameter groups per model part (own learning rates for vision / merger / LLM);
- length-grouped batches from lengths measured in the dataset pre-pass (no re-processing);
- a stop on NaN/inf loss that names the step and the sample ids of the batch;
- a JSONL progress file (step, loss, lr, real tokens/s, % done, ETA) that a UI can tail;
- the processor and the preprocessing config saved into every checkpoint.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import torch
from transformers import Trainer, TrainerCallback
from transformers.trainer_pt_utils import LengthGroupedSampler


class NonFiniteLoss(RuntimeError):
    pass


class GeoVLTrainer(Trainer):
    def __init__(self, *args, param_groups_fn=None, lengths=None, **kwargs):
        super().__init__(*args, **kwargs)
        self._param_groups_fn = param_groups_fn
        self._lengths = lengths
        self.real_tokens = 0  # non-padding tokens seen by this process
        self.padded_tokens = 0  # tokens including padding

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

    def _get_train_sampler(self, train_dataset=None):
        ds = train_dataset if train_dataset is not None else self.train_dataset
        if self.args.train_sampling_strategy == "group_by_length" and self._lengths is not None and len(self._lengths) == len(ds):
            g = torch.Generator()
            g.manual_seed(self.args.data_seed if self.args.data_seed is not None else self.args.seed)
            return LengthGroupedSampler(
                self.args.train_batch_size * self.args.gradient_accumulation_steps,
                lengths=list(self._lengths),
                generator=g,
            )
        return super()._get_train_sampler(train_dataset)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        sample_ids = inputs.pop("sample_ids", None)
        if model.training:
            self.real_tokens += int(inputs["attention_mask"].sum())
            self.padded_tokens += int(inputs["attention_mask"].numel())
        out = super().compute_loss(model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch)
        loss = out[0] if return_outputs else out
        if not torch.isfinite(loss.detach()).all():
            raise NonFiniteLoss(
                f"loss became {loss.item()} at step {self.state.global_step + 1}; "
                f"batch samples: {sample_ids}. Lower the learning rate, check these samples, or use precision=fp32."
            )
        return out

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        inputs = dict(inputs)
        inputs.pop("sample_ids", None)
        return super().prediction_step(model, inputs, prediction_loss_only, ignore_keys=ignore_keys)


class ProgressFileCallback(TrainerCallback):
    """Appends one JSON line per log event to ``progress.jsonl`` (main process only)."""

    def __init__(self, path: str | Path, trainer_ref=None):
        self.path = Path(path)
        self.trainer = trainer_ref
        self._t0 = None
        self._tok0 = 0
        self._last_t = None
        self._last_tok = 0

    def on_train_begin(self, args, state, control, **kw):
        self._t0 = self._last_t = time.time()
        self._tok0 = self._last_tok = self.trainer.real_tokens if self.trainer else 0
        self._step0 = state.global_step

    def on_log(self, args, state, control, logs=None, **kw):
        if not state.is_world_process_zero or logs is None:
            return
        now = time.time()
        tok = self.trainer.real_tokens if self.trainer else 0
        dt = max(now - self._last_t, 1e-9)
        steps_done = state.global_step - self._step0
        elapsed = now - self._t0
        remaining = state.max_steps - state.global_step
        eta = elapsed / steps_done * remaining if steps_done > 0 else None
        rec = {
            "step": state.global_step,
            "max_steps": state.max_steps,
            "epoch": round(state.epoch or 0.0, 4),
            "percent": round(100.0 * state.global_step / max(state.max_steps, 1), 2),
            "elapsed_s": round(elapsed, 2),
            "eta_s": round(eta, 1) if eta is not None else None,
            "tokens_per_s": round((tok - self._last_tok) / dt, 1),
            "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
        }
        for k in ("loss", "learning_rate", "grad_norm", "eval_loss", "train_loss"):
            if k in logs and logs[k] is not None and not (isinstance(logs[k], float) and math.isnan(logs[k])):
                rec["lr" if k == "learning_rate" else k] = logs[k]
        self._last_t, self._last_tok = now, tok
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(rec) + "\n")


class SaveExtrasCallback(TrainerCallback):
    """Every checkpoint is self-contained: processor + preprocessing config next to the weights."""

    def __init__(self, processor, preprocess):
        self.processor = processor
        self.preprocess = preprocess

    def on_save(self, args, state, control, **kw):
        if not state.is_world_process_zero:
            return
        ckpt = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        if ckpt.is_dir():
            self.processor.save_pretrained(ckpt)
            self.preprocess.save(ckpt)
