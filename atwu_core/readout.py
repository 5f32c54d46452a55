"""What the host reads of a batch, in one device -> host copy: the training step's only host sync, so the loop
queues its next step while this one's numbers travel."""

from __future__ import annotations

import torch

from atwu_core.data import EncodedSample
from atwu_core.forward import Forward
from atwu_core.records import TOKEN_MAPS, TokenValues
from atwu_core.weighting import TokenWeights


class HostReadout:
    """Device values -> host floats in one copy: into a reused pinned buffer asynchronously on CUDA, then one wait
    for that copy (the training step's only host sync; on the CPU a plain read)."""

    def __init__(self) -> None:
        self._buffer: torch.Tensor | None = None
        self._done: torch.cuda.Event | None = None

    def read(self, values: torch.Tensor) -> list[float]:
        if values.device.type != "cuda":
            return values.tolist()
        n = values.numel()
        if self._buffer is None or self._buffer.numel() < n:
            self._buffer = torch.empty(2 * n, dtype=torch.float32, pin_memory=True)  # room to grow
            self._done = torch.cuda.Event()
        host = self._buffer[:n]
        host.copy_(values, non_blocking=True)
        self._done.record()
        self._done.synchronize()
        return host.tolist()


class BatchReadout:
    """A forget batch's values the host needs, in one device -> host copy: the 0-dim tensors among `scalars`
    (floats pass through), and the per-token record fields (`TOKEN_MAPS`) per sample, answer tokens only."""

    def __init__(self, samples: list[EncodedSample]) -> None:
        self._samples = samples  # what a forward's `sample_index` indexes
        self._host = HostReadout()

    def __call__(
        self, fw: Forward, weights: TokenWeights, scalars: dict[str, torch.Tensor | float]
    ) -> tuple[dict[str, float], dict[str, TokenValues]]:
        at = fw.positions
        token_maps = {"scores": weights.scores, "loss_weights": weights.loss, "probs": torch.exp(-fw.nll)}  # [B, T]
        names = [k for k, v in scalars.items() if isinstance(v, torch.Tensor)]
        per_token = torch.stack([token_maps[k] for k in TOKEN_MAPS]).detach()[:, at.rows, at.cols]  # [M, N]
        packed = torch.cat([*(scalars[k].detach().float().reshape(1) for k in names), per_token.float().flatten()])
        flat = self._host.read(packed)  # [len(names) + M N]
        read = {k: v if isinstance(v, float) else flat[names.index(k)] for k, v in scalars.items()}
        ids = [self._samples[i].record_id for i in fw.sample_index]
        n, m = sum(at.lengths), len(names)
        rows = {k: flat[m + j * n : m + (j + 1) * n] for j, k in enumerate(TOKEN_MAPS)}
        return read, {k: dict(zip(ids, at.split(values))) for k, values in rows.items()}
