"""A thin subclass of ``transformers.Trainer`` (no fork, no monkey patches) and its callbacks.

What it adds:
- optimizer parameter groups per model part (own learning rates for vision / merger / LLM);
- length-grouped batches with transformers' ``LengthGroupedSampler`` on the lengths measured in the dataset
  pre-pass (no re-processing), re-seeded per epoch (so a resumed run sees the same batches);
- a stop on NaN/inf loss that names the step and the sample ids of the batch;
- a JSONL progress file (step, loss, lr, real tokens/s, % done, ETA) that a UI can tail;
- the processor and the preprocessing config saved into every checkpoint;
- the model's vision input (e.g. a spectral projector) saved beside the weights in every checkpoint and restored on resume;
- resume restores every saved tensor (full weights in the checkpoint key layout, LoRA adapters) or refuses
  naming the file and tensors (:mod:`geovl.train.resume`);
- optionally (``GEOVL_RANK_STATE=1``) a per-rank fingerprint of the trained weights, to check that
  distributed ranks stayed in sync.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from pathlib import Path

import torch
from transformers import Trainer, TrainerCallback
from transformers.trainer_pt_utils import LengthGroupedSampler, get_length_grouped_indices

from ..errors import GeoVLError

RANK_STATE_ENV = "GEOVL_RANK_STATE"  # =1: each rank writes OUT/rank{N}.json at the end (see RankStateCallback)


class NonFiniteLoss(GeoVLError, RuntimeError):
    pass


class LengthGroupedOrder(LengthGroupedSampler):
    """Batches of similar length in shuffled order: transformers' length grouping, then the batches shuffled.

    The grouping is transformers' ``get_length_grouped_indices`` on the lengths measured in the dataset pre-pass
    (the stock Trainer path would decode every image to find them): a seeded permutation cut into mega-batches of
    50 batches, each sorted longest first. Taken as it is, that order sweeps from long to short samples through
    every mega-batch — 50 steps at a time, and on our data length follows the question type — which cost the
    demo's SFT stage 15 points of yes/no accuracy (74.5 % → 59.6 %, one run each). So the batches are then
    shuffled (same generator), the longest batch goes first (an out-of-memory shows at step 1) and the one short
    batch, if any, last. The generator is re-seeded from (seed, epoch) on every iteration, so a resumed run
    replays exactly the batches of an uninterrupted one (:meth:`set_epoch` is called by the Trainer each epoch).
    The stock mega-batch rule ``min(N // (4·batch), 50)`` is not used: it shrinks them on small sets (padding
    13.6 % instead of 3.4 % for 64 samples of 80–1400 tokens in batches of 4)."""

    MEGA_BATCH_MULT = 50

    def __init__(self, lengths, batch_size: int, seed: int = 0):
        super().__init__(max(1, int(batch_size)), lengths=[int(x) for x in lengths], generator=torch.Generator())
        self.seed = int(seed)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def batches(self) -> list[list[int]]:
        g = self.generator
        g.manual_seed(self.seed + self.epoch)
        idx = get_length_grouped_indices(self.lengths, self.batch_size, self.MEGA_BATCH_MULT, g)
        cut = [idx[k : k + self.batch_size] for k in range(0, len(idx), self.batch_size)]
        full = [b for b in cut if len(b) == self.batch_size]
        tail = [b for b in cut if len(b) < self.batch_size]  # mega-batches hold whole batches: at most one
        full = [full[o] for o in torch.randperm(len(full), generator=g).tolist()]
        if full:
            longest = max(range(len(full)), key=lambda b: max(self.lengths[i] for i in full[b]))
            full.insert(0, full.pop(longest))
        return full + tail

    def __iter__(self):
        return iter([i for b in self.batches() for i in b])


def shutdown_dataloader_workers(trainer) -> None:
    """Stop the (persistent) DataLoader worker processes now.

    Left to the garbage collector, the workers' queues can be finalised before the iterator, so the
    stop message never reaches them and each worker costs a 5 s join timeout — in the next run of the
    same process (tests, notebooks, a UI). Shutting them down explicitly is instant."""
    for dl in getattr(trainer.accelerator, "_dataloaders", []):
        it = getattr(dl, "_iterator", None)
        if it is not None and hasattr(it, "_shutdown_workers"):
            it._shutdown_workers()
            dl._iterator = None


def deepspeed_offloads_optimizer(config: dict) -> bool:
    """True when a DeepSpeed config offloads the optimizer state to the CPU (ZeRO-Offload)."""
    off = (config.get("zero_optimization") or {}).get("offload_optimizer") or {}
    return str(off.get("device", "none")).lower() in ("cpu", "nvme")


def padding_fraction(lengths, batches) -> float:
    """Share of padding tokens when ``batches`` (lists of indices) are right-padded to their longest."""
    real = sum(lengths[i] for b in batches for i in b)
    padded = sum(max(lengths[i] for i in b) * len(b) for b in batches)
    return 1 - real / max(padded, 1)


class PartsAndVisionInputMixin:
    """What geovl's SFT trainer and its GRPO trainer (a ``trl.GRPOTrainer``) add alike to a transformers ``Trainer``:

    - optimizer parameter groups per model part (``param_groups_fn``: own learning rates for vision /
      merger / LLM / the vision input's own parameters, e.g. a spectral projector);
    - the model's vision input (:mod:`geovl.models.vision_input`) saved in its own files beside the weights of
      every checkpoint and ``final/`` (never inside them: its tensors are not in the model's state dict) through
      the public :meth:`save_model`, and restored strictly on resume by :class:`ResumeChecks` (a callback);
    - a resume that restores every saved tensor or refuses naming the file (:mod:`geovl.train.resume`): the
      checkpoint's files are checked before training starts (public :meth:`train`), the adapter and the vision
      input after the Trainer loaded the checkpoint (``on_train_begin``). Full weights are the one part that
      still needs a private override (:meth:`_load_from_checkpoint`, see there)."""

    _param_groups_fn = None
    _resuming_from = None

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.add_callback(ResumeChecks(self))

    def create_optimizer(self, model=None):
        from .sharded import keep_vision_tower_in_step  # ZeRO-3 / FSDP2: no collective mismatch on text-only batches

        keep_vision_tower_in_step(self.model)
        if self.optimizer is None and self._param_groups_fn is not None:
            opt_model = self.model if model is None else model
            groups = self._param_groups_fn(opt_model)
            cls, kwargs = self.get_optimizer_cls_and_kwargs(self.args, opt_model)
            kwargs.pop("params", None)
            kwargs.pop("lr", None)  # each group has its own lr
            ds_cfg = getattr(getattr(self.args, "hf_deepspeed_config", None), "config", None)
            if ds_cfg and deepspeed_offloads_optimizer(ds_cfg):
                # ZeRO-Offload refuses a torch optimizer; its CPU Adam keeps our per-part groups
                from deepspeed.ops.adam import DeepSpeedCPUAdam

                cls = DeepSpeedCPUAdam
                kwargs = {k: v for k, v in kwargs.items() if k in ("betas", "eps")} | {"adamw_mode": True}
            for g in groups:
                g.pop("name", None)
            self.optimizer = cls(groups, lr=self.args.learning_rate, **kwargs)
            return self.optimizer
        return super().create_optimizer(model)

    def vision_input(self):
        """The model's :class:`~geovl.models.vision_input.VisionInput` (RGB when nothing is attached)."""
        from ..models.vision_input import attached

        return attached(self.accelerator.unwrap_model(self.model))

    def save_model(self, output_dir=None, _internal_call=False):
        """The weights (``Trainer.save_model``; also what every checkpoint calls), then the vision input's files beside them."""
        super().save_model(output_dir, _internal_call=_internal_call)
        if self.args.should_save:
            self.vision_input().save(output_dir if output_dir is not None else self.args.output_dir)

    def train(self, resume_from_checkpoint=None, *args, **kwargs):
        """``Trainer.train``; a checkpoint to resume from is checked first: its state files read (else a
        :class:`~geovl.train.resume.ResumeError` naming the damaged one — the Trainer's own error does not) and it
        holds what the recipe trains (a LoRA adapter or full weights)."""
        if resume_from_checkpoint is True:  # the Trainer's "the last one": name it here, so it is checked too
            from transformers.trainer_utils import get_last_checkpoint

            resume_from_checkpoint = get_last_checkpoint(self.args.output_dir) or True  # none: the Trainer's own error
        if resume_from_checkpoint and not isinstance(resume_from_checkpoint, bool):
            from .resume import check_checkpoint

            check_checkpoint(
                resume_from_checkpoint,
                self.accelerator.unwrap_model(self.model),
                world_size=self.args.world_size,
                rank=self.args.process_index,
            )
        self._resuming_from = resume_from_checkpoint
        try:
            return super().train(resume_from_checkpoint, *args, **kwargs)
        finally:
            self._resuming_from = None

    def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
        """Full weights are restored strictly by :func:`~geovl.train.resume.restore_full_weights`; anything else by the Trainer.

        The one private override left, on purpose: ``Trainer.train(resume_from_checkpoint=...)`` is the only way to
        get the optimizer, scheduler, RNG and trainer state back, and it always calls this method first. Its own
        load of full weights reads ``model.safetensors`` with ``load_state_dict(strict=False)`` in the file's key
        layout — which for Qwen2-VL / Qwen2.5-VL is the release layout (``model.layers.*``), not the module tree
        (``model.language_model.*``) — so it restores none of those weights and only logs "missing keys". No
        public hook runs between that load and the state restore, and restoring afterwards (``on_train_begin``)
        would still let the lenient load and its warnings happen first; replacing this method is what keeps the
        bit-exact resume (tests/test_resume.py) without a second load path."""
        from peft import PeftModel

        from .resume import has_full_weights, restore_full_weights

        target = self.accelerator.unwrap_model(model if model is not None else self.model)
        if not self.is_fsdp_enabled and not isinstance(target, PeftModel) and has_full_weights(resume_from_checkpoint):
            restore_full_weights(target, resume_from_checkpoint)
            return
        super()._load_from_checkpoint(resume_from_checkpoint, model)


class ResumeChecks(TrainerCallback):
    """On a resumed run, after the Trainer loaded the checkpoint and before the first step (``on_train_begin``):
    a LoRA adapter holds exactly the file's tensors with the file's values, and the vision input (e.g. a spectral
    projector) is restored strictly from its own files — a checkpoint without them is an error."""

    def __init__(self, trainer):
        self.trainer = trainer

    def on_train_begin(self, args, state, control, **kw):
        ckpt = self.trainer._resuming_from
        if not ckpt or isinstance(ckpt, bool):
            return
        from peft import PeftModel

        from ..models.vision_input import VisionInputError
        from .resume import ResumeError, check_adapter_restored

        target = self.trainer.accelerator.unwrap_model(self.trainer.model)
        if isinstance(target, PeftModel) and not self.trainer.is_deepspeed_enabled:
            check_adapter_restored(target, ckpt)
        try:
            # in place, into the parameters the optimizer holds (untested under DeepSpeed ZeRO-3, where they are partitioned)
            self.trainer.vision_input().restore(ckpt)
        except VisionInputError as e:
            raise ResumeError(str(e)) from None


class GeoVLTrainer(PartsAndVisionInputMixin, Trainer):
    def __init__(self, *args, param_groups_fn=None, lengths=None, **kwargs):
        super().__init__(*args, **kwargs)
        self._param_groups_fn = param_groups_fn
        self._lengths = lengths
        self.real_tokens = 0  # non-padding tokens seen by this process
        self.padded_tokens = 0  # tokens including padding
        self.seen_ids: list[str] = []  # sample ids trained on by this process (kept with GEOVL_RANK_STATE=1)
        self._keep_ids = os.environ.get(RANK_STATE_ENV, "") in ("1", "true", "yes")

    def _get_train_sampler(self, train_dataset=None):
        ds = train_dataset if train_dataset is not None else self.train_dataset
        if (
            self.args.train_sampling_strategy == "group_by_length"
            and self._lengths is not None
            and len(self._lengths) == len(ds)
        ):
            seed = self.args.data_seed if self.args.data_seed is not None else self.args.seed
            # batches of the Trainer's size × accumulation, like the stock Trainer's length grouping
            return LengthGroupedOrder(
                self._lengths, self.args.train_batch_size * self.args.gradient_accumulation_steps, seed
            )
        return super()._get_train_sampler(train_dataset)

    def _get_eval_sampler(self, eval_dataset):
        lengths = getattr(eval_dataset, "lengths", None)
        if lengths is not None and len(lengths) == len(eval_dataset):
            # evaluation order does not matter: longest first, so batches hold similar lengths (little padding)
            return sorted(range(len(lengths)), key=lambda i: -lengths[i])
        return super()._get_eval_sampler(eval_dataset)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        sample_ids = inputs.pop("sample_ids", None)
        if model.training:
            mask = inputs.get("attention_mask")  # a packed row has none: every token is real
            self.real_tokens += int(mask.sum()) if mask is not None else int(inputs["input_ids"].numel())
            self.padded_tokens += int(mask.numel()) if mask is not None else int(inputs["input_ids"].numel())
            if self._keep_ids:
                self.seen_ids.extend(sample_ids or [])
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
    """Appends one JSON line per log event to ``progress.jsonl`` (main process only).

    Subclasses may list extra log keys to copy through, by prefix, in ``FORWARD_PREFIXES``
    (GRPO forwards ``rewards/<name>/mean``, ``reward``, ...)."""

    FORWARD_PREFIXES: tuple[str, ...] = ()

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
        if self.FORWARD_PREFIXES:
            for k, v in logs.items():
                if k.startswith(self.FORWARD_PREFIXES) and isinstance(v, (int, float)) and math.isfinite(v):
                    rec[k] = v
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


def trainable_fingerprint(model) -> tuple[str, int]:
    """(sha256 over the names and exact float32 bytes of all trainable parameters, their count)."""
    h = hashlib.sha256()
    n = 0
    for name, p in sorted(model.named_parameters(), key=lambda kv: kv[0]):
        if not p.requires_grad:
            continue
        h.update(name.encode())
        h.update(p.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
        n += p.numel()
    return h.hexdigest(), n


class RankStateCallback(TrainerCallback):
    """With ``GEOVL_RANK_STATE=1`` each process writes ``OUT/rank{N}.json`` at the end of training:
    rank, world size, steps, a fingerprint of its trainable weights and the sample ids it trained on.
    Identical fingerprints on all ranks prove the replicas stayed in sync (DDP); disjoint sample ids
    prove the data was sharded. Off by default (hashing every weight is wasted work in normal runs)."""

    def __init__(self, trainer):
        self.trainer = trainer

    def on_train_end(self, args, state, control, model=None, **kw):
        if os.environ.get(RANK_STATE_ENV, "") not in ("1", "true", "yes"):
            return
        import torch.distributed as dist

        rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
        world = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
        m = self.trainer.accelerator.unwrap_model(self.trainer.model)
        digest, n = trainable_fingerprint(m)
        rec = {
            "rank": rank,
            "world_size": world,
            "args_world_size": args.world_size,
            "global_step": state.global_step,
            "trainable_params": n,
            "sha256": digest,
            "samples_seen": len(self.trainer.seen_ids),
            "sample_ids": self.trainer.seen_ids,
        }
        Path(args.output_dir).mkdir(parents=True, exist_ok=True)
        (Path(args.output_dir) / f"rank{rank}.json").write_text(json.dumps(rec, indent=1) + "\n")
