"""The model's update: AdamW, its learning-rate schedule and the loss scaler a float16 model needs, made together
because each reads the others (the scaler decides whether a non-finite gradient fails the job)."""

from __future__ import annotations

import math

import torch

from atwu_core import distributed
from atwu_core.config import JobConfig
from atwu_core.job_error import JobError


class Optimiser:
    """AdamW with linear warm-up then linear decay to 0 over the job's steps, and the loss scaler a float16 model
    needs (its LoRA weights are float32, so their gradients can be unscaled). Fused on CPU and CUDA: one kernel for
    all parameters, its step counters on the device (the unfused one reads them on the host)."""

    def __init__(self, params: list[torch.nn.Parameter], config: JobConfig, model_dtype: str):
        self.params = params
        device = params[0].device
        self.scaler = torch.amp.GradScaler(device.type, enabled=model_dtype == "float16" and not config.full)
        if self.scaler.is_enabled() and params[0].dtype == torch.float16:
            raise JobError(
                "lora_dtype=model on a float16 model: the loss scaler cannot unscale float16 LoRA gradients; "
                "use dtype=bfloat16, or lora_dtype=float32."
            )
        fused = device.type in ("cpu", "cuda") or None
        self.optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay, fused=fused)
        steps, warmup = config.steps, max(1, int(config.warmup_ratio * config.steps))
        self.schedule = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda k: min((k + 1) / warmup, max(0.0, (steps - k) / max(1, steps - warmup)))
        )

    @property
    def lr(self) -> float:
        """The learning rate of the step just taken."""
        return self.schedule.get_last_lr()[0]

    def update(self, loss: torch.Tensor) -> torch.Tensor:
        """Backward (loss-scaled for a float16 model), gradients summed over processes, clipped at norm 1, one AdamW
        step; returns the gradient norm (0-dim, on the device). Nothing here waits for the device: a non-finite loss
        or gradient is caught on the step's read-out (`check_finite`), after this update (the job fails then, and
        the diverged adapter is never saved)."""
        with torch.profiler.record_function("atwu.update"):
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
            distributed.all_reduce_grads(self.params)
            self.scaler.unscale_(self.optimizer)
            grad_norm = torch.nn.utils.clip_grad_norm_(self.params, 1.0)
            self.scaler.step(self.optimizer)  # skipped (and the scale lowered) when float16 gradients overflowed
            self.scaler.update()
            self.schedule.step()
            return grad_norm

    def check_finite(self, step: int, loss: float, grad_norm: float) -> None:
        """Fail on a non-finite loss, or on non-finite gradients unless the loss scaler is there to skip them."""
        if not math.isfinite(loss):
            raise JobError(f"step {step}: the loss is {loss}; lower the learning rate or gamma.")
        if not math.isfinite(grad_norm) and not self.scaler.is_enabled():
            raise JobError(f"step {step}: the gradient norm is {grad_norm}; lower the learning rate or gamma.")
