"""A thin subclass of ``transformers.Trainer`` (no fork, no monkey patches) and its callbacks.

What it adds:
- optimizer parameter groups per model part (own learning rates for vision / merger / LLM);
- length-grouped batches from lengths measured in the dataset pre-pass (no re-processing), in a
  shuffled batch order that is re-seeded per epoch (so a resumed run sees the same batches);
- a stop on NaN/inf loss that names the step and the sample ids of the batch;
- a JSONL progress file (step, loss, lr, real tokens/s, % done, ETA) that a UI can tail;
- the processor and the preprocessing config saved into every checkpoint;
- a spectral projector (if attached) saved beside the weights in every checkpoint and restored on resume;
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


RANK_STATE_ENV = "GEOVL_RANK_STATE"  # =1: each rank writes OUT/rank{N}.json at the end (see RankStateCallback)


class NonFiniteLoss(RuntimeError):
    pass


class LengthGroupedOrder(torch.utils.data.Sampler):
    """Sample order in which every run of ``batch_size`` consecutive indices has similar lengths.

    A seeded permutation is cut into mega-batches of ``mega_batch_mult`` batches; each is sorted by
    length and cut into batches; the batch order is shuffled, the longest batch goes first (an
    out-of-memory shows at step 1, not hours in) and the one short batch (if any) goes last. The
    order depends only on (seed, epoch): :meth:`set_epoch` is called by the Trainer each epoch, so
    a resumed run replays exactly the batches of an uninterrupted one."""

    def __init__(self, lengths, batch_size: int, seed: int = 0, mega_batch_mult: int = 50):
        self.lengths = [int(x) for x in lengths]
        self.batch_size = max(1, int(batch_size))
        self.seed = int(seed)
        self.mega = self.batch_size * max(1, int(mega_batch_mult))
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.lengths)

    def batches(self) -> list[list[int]]:
        g = torch.Generator()
        g.manual_seed(self.seed + self.epoch)
        n = len(self.lengths)
        perm = torch.randperm(n, generator=g).tolist()
        full, tail = [], []
        for k in range(0, n, self.mega):
            chunk = sorted(perm[k : k + self.mega], key=lambda i: -self.lengths[i])
            for j in range(0, len(chunk), self.batch_size):
                b = chunk[j : j + self.batch_size]
                (full if len(b) == self.batch_size else tail).append(b)
        order = torch.randperm(len(full), generator=g).tolist()
        full = [full[o] for o in order]
        if full:
            longest = max(range(len(full)), key=lambda b: max(self.lengths[i] for i in full[b]))
            full.insert(0, full.pop(longest))
        return full + tail  # at most one short batch, always last

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


class PartsAndProjectorMixin:
    """What geovl's SFT trainer and its GRPO trainer (a ``trl.GRPOTrainer``) add alike to a transformers ``Trainer``:

    - optimizer parameter groups per model part (``param_groups_fn``: own learning rates for vision /
      merger / LLM / spectral projector);
    - a spectral projector (if attached) saved in its own files beside the weights of every checkpoint
      and ``final/`` (never inside them), and restored on resume."""

    _param_groups_fn = None

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

    def _spectral_input(self):
        from ..spectral.vision_input import find

        return find(self.accelerator.unwrap_model(self.model))

    def _save(self, output_dir=None, state_dict=None):
        si = self._spectral_input()
        if si is None:
            return super()._save(output_dir, state_dict)
        from ..spectral.vision_input import save, strip_state_dict

        if state_dict is None:
            state_dict = self.accelerator.unwrap_model(self.model).state_dict()
        super()._save(output_dir, strip_state_dict(state_dict))
        if self.args.should_save:
            save(si, output_dir if output_dir is not None else self.args.output_dir)

    def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
        """Every saved tensor restored, or a :class:`~geovl.train.resume.ResumeError` naming the file and tensors
        (the Trainer's own load of full weights ignores the checkpoint key layout; see :mod:`geovl.train.resume`)."""
        from peft import PeftModel

        from .resume import ADAPTER_FILE, ResumeError, check_adapter_restored, check_state_files, has_full_weights, restore_full_weights

        check_state_files(resume_from_checkpoint, names=("trainer_state.json",))  # read by Trainer.train right after
        target = self.accelerator.unwrap_model(model if model is not None else self.model)
        if self.is_fsdp_enabled:  # pragma: no cover - FSDP checkpoints have their own loader (not used by geovl)
            super()._load_from_checkpoint(resume_from_checkpoint, model)
        elif isinstance(target, PeftModel):
            if not (Path(resume_from_checkpoint) / ADAPTER_FILE).is_file():
                held = "full weights" if has_full_weights(resume_from_checkpoint) else f"no {ADAPTER_FILE}"
                raise ResumeError(f"{resume_from_checkpoint}: holds {held}, but the recipe trains a LoRA adapter")
            super()._load_from_checkpoint(resume_from_checkpoint, model)
            check_adapter_restored(target, resume_from_checkpoint)
        elif (Path(resume_from_checkpoint) / ADAPTER_FILE).is_file():
            raise ResumeError(f"{Path(resume_from_checkpoint) / ADAPTER_FILE}: a LoRA adapter checkpoint, but the recipe trains full weights")
        else:
            restore_full_weights(target, resume_from_checkpoint)
        si = self._spectral_input()
        if si is not None:
            from ..spectral.projector import SpectralProjector

            saved = SpectralProjector.load(resume_from_checkpoint)  # strict: a checkpoint without it is an error
            si.projector.load_state_dict(saved.state_dict(), strict=True)

    def _load_optimizer_and_scheduler(self, checkpoint):
        try:
            super()._load_optimizer_and_scheduler(checkpoint)
        except Exception:
            if checkpoint:
                from .resume import check_state_files

                check_state_files(checkpoint)  # a ResumeError naming the damaged file
            raise

    def _load_rng_state(self, checkpoint):
        try:
            super()._load_rng_state(checkpoint)
        except Exception:
            if checkpoint:
                from .resume import check_state_files

                check_state_files(checkpoint)
            raise


class GeoVLTrainer(PartsAndProjectorMixin, Trainer):
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
        if self.args.train_sampling_strategy == "group_by_length" and self._lengths is not None and len(self._lengths) == len(ds):
            seed = self.args.data_seed if self.args.data_seed is not None else self.args.seed
            return LengthGroupedOrder(self._lengths, self.args.per_device_train_batch_size, seed)
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
            self.real_tokens += int(inputs["attention_mask"].sum())
            self.padded_tokens += int(inputs["attention_mask"].numel())
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
