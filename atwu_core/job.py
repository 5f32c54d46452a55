"""The one unlearning loop every method runs, streaming a record per step to a run folder.

    before:  the loaded model's answer quality and per-token NLL (the reference every method reads)
    step:    batch -> forward -> weigh (a learning scheme learns here) -> losses -> update -> record
    after:   a final pass over every forget sample, the saved adapter, quality after, metrics.json

The loaded model is shared with its owner (the app caches it): `models.trainable` wraps it in LoRA (or trains a
copy with --full) and always unwraps it again, so a failed or cancelled job leaves the model untouched.
"""

from __future__ import annotations

import contextlib
import math
import random
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path

import torch

from atwu_core import distributed, evaluation, losses, metrics, models
from atwu_core.config import JobConfig
from atwu_core.data import Dataset, encode_records, load_data
from atwu_core.files import replace_dir, set_file_modes
from atwu_core.forward import Forward, ForwardNeeds, answer_nll, batches, forward
from atwu_core.generation import evaluating, model_device, pad_token_id
from atwu_core.methods import Method, build_method
from atwu_core.records import BeforeRecord, FinalRecord, SampleRecord, Status, StepRecord, TokenValues
from atwu_core.runs import RANK_SCRATCH, RunWriter, check_run_dir, new_run_dir, runs_root
from atwu_core.weighting import PrepareContext, TokenWeights
from atwu_core.writer_thread import WriterThread


class JobError(RuntimeError):
    """The job stopped; the run folder's status says why and keeps the records written so far."""


class CancelToken:
    """Set from any thread; the loop checks it before every step."""

    def __init__(self) -> None:
        self._event = threading.Event()

    def cancel(self) -> None:
        self._event.set()

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()


def _versions() -> dict[str, str]:
    import peft
    import transformers

    return {"torch": torch.__version__, "transformers": transformers.__version__, "peft": peft.__version__}


class UnlearningJob:
    """Set up a job (settings checked, run folder claimed, data and model loaded); `stream()` runs it, step by step."""

    def __init__(
        self,
        config: JobConfig,
        *,
        loaded: models.LoadedModel | None = None,
        dataset: Dataset | None = None,
        run_dir: str | Path | None = None,
    ):
        started = time.perf_counter()
        config.validate()
        distributed.init()  # a no-op unless torchrun / accelerate launched several processes
        self.config = config
        self.run_dir = Path(run_dir) if run_dir is not None else new_run_dir(config.method)
        if not distributed.is_main():  # only rank 0 writes the run folder; the others write into a scratch one
            # inside the run folder (or the runs root when each rank picked its own name), hidden from listings,
            # so a killed rank leaves nothing in $TMPDIR
            home = Path(run_dir) if run_dir is not None else runs_root()
            home.mkdir(parents=True, exist_ok=True)
            self._scratch = tempfile.TemporaryDirectory(prefix=f"{RANK_SCRATCH}{distributed.rank()}-", dir=home)
            self.run_dir = Path(self._scratch.name) / "run"
        check_run_dir(self.run_dir)
        self.method: Method = build_method(config.method, config.params)
        dataset = dataset or load_data(config.data, config.retain_data)
        forget = dataset.forget
        if config.forget_ids is not None:
            wanted = set(config.forget_ids)
            forget = [r for r in forget if r.id in wanted]
            if not forget:
                raise ValueError(
                    f"none of forget_ids {sorted(wanted)[:5]} is in the forget set "
                    f"(its ids look like {dataset.forget[0].id!r})."
                )
        if self.method.alpha > 0 and not dataset.retain:
            raise ValueError(
                f"{config.method} uses a retain loss but the data has no retain set; "
                "give retain data or set retain_loss=none."
            )
        self.dataset = Dataset(dataset.name, forget, dataset.retain, dataset.holdout)
        settings = (config.lora_targets, config.lora_layers, config.params)
        if loaded is None and (skeleton := models.model_skeleton(config.model)) is not None:
            models.check_settings(skeleton, *settings)  # before the weights load, from config.json alone
        self.loaded = loaded or models.load_model(config.model, device=config.device, dtype=config.dtype)
        models.check_settings(self.loaded.model, *settings)
        tok = self.loaded.tokenizer
        self.forget = encode_records(forget, tok, config.max_length, config.chat_template)
        self.retain = encode_records(dataset.retain, tok, config.max_length, config.chat_template)
        self.pad_id = pad_token_id(tok)
        self.steps_done = 0
        self.records: list[StepRecord] = []
        self.step_seconds: list[float] = []
        self.ref_nll: list[torch.Tensor] = []  # per forget sample: answer-token NLL under the loaded model
        self._readout = HostReadout()
        self.before: BeforeRecord | None = None
        self.metrics: dict | None = None
        self.state = "created"
        self.on_status: Callable[[Status], None] | None = None  # told of every status write (the CLI's bars)
        self._loading_seconds = time.perf_counter() - started

    # ------------------------------------------------------------------------------------------ the loop

    def stream(self, cancel: CancelToken | None = None) -> Iterator[StepRecord]:
        """Run the job; yields after every step. Honours `cancel` before each step."""
        cfg, method, scheme = self.config, self.method, self.method.scheme
        cancel = cancel or CancelToken()
        writer = WriterThread(RunWriter(self.run_dir))
        self.status = Status("running", 0, cfg.steps, phase_seconds={"loading": round(self._loading_seconds, 3)})
        self._tick = time.perf_counter()
        with contextlib.closing(writer), self._outcome(writer), self.loaded.lock:
            self._write_header(writer)
            before_quality = self._before(writer, cancel)
            torch.manual_seed(cfg.seed)
            rng = random.Random(cfg.seed)
            with self._trainable() as trained, contextlib.ExitStack() as compiled:
                model = trained.model
                scheme.prepare(self._prepare_context(model))
                params = [p for p in model.parameters() if p.requires_grad]
                optimizer, schedule = self._optimizer(params)
                self._phase(writer, "training", 0, cfg.steps)
                model.train()
                t_start = time.perf_counter()
                compiled.enter_context(models.compiled_blocks(model, cfg.compile))  # the training steps only
                while self.steps_done < cfg.steps and not distributed.any_rank(cancel.cancelled):
                    t0, step = time.perf_counter(), self.steps_done + 1
                    # forward the forget batch; the scheme weighs its tokens (and learns, if it does)
                    fw = self._forward(model, self._batch(rng, len(self.forget), cfg.forget_batch_size))
                    weights, logged = scheme.step(fw, step)
                    # the method's loss: gamma * forget + alpha * retain
                    forget_loss = method.forget_loss(fw, weights.loss)
                    retain_loss, retain_tokens = self._retain_loss(trained, rng)
                    loss = method.gamma * forget_loss + method.alpha * retain_loss
                    # the model's update, queued without waiting for the device
                    grad_norm = self._update(loss, params, optimizer, schedule)
                    # the record: losses, learning rates, this batch's scores, loss weights and probabilities, read
                    # in the step's one host sync; a non-finite loss or gradient stops the job here
                    self.steps_done = step
                    scalars = {"forget": forget_loss, "retain": retain_loss, "total": loss, **logged}
                    losses_now, values = self._read(fw, weights, {**scalars, "grad_norm": grad_norm})
                    self._check_finite(step, losses_now["total"], losses_now.pop("grad_norm"))
                    lrs = {"model": schedule.get_last_lr()[0], **scheme.learning_rates()}
                    elapsed, tokens = time.perf_counter() - t_start, fw.tokens + retain_tokens
                    record = StepRecord(step, elapsed, losses_now, lrs, tokens, *values)
                    self.step_seconds.append(time.perf_counter() - t0)
                    self.records.append(record)
                    writer.append(record)
                    self._phase(writer, "training", step, cfg.steps)
                    yield record
                compiled.close()
                self.state = "cancelled" if distributed.any_rank(cancel.cancelled) else "completed"
                self._finish(writer, trained, before_quality, time.perf_counter() - t_start, cancel)
                writer.flush()

    def run(self, cancel: CancelToken | None = None) -> dict | None:
        """Run to the end (no live consumer); returns the metrics (None if it stopped before them)."""
        for _ in self.stream(cancel):
            pass
        return self.metrics

    # ------------------------------------------------------------------------------------------ phases

    def _before(self, writer: RunWriter, cancel: CancelToken) -> dict:
        """Each forget token's NLL under the loaded model (the reference every method reads, and the baseline of
        realised forgetting), and the loaded model's quality (memoised on it)."""
        cfg = self.config
        self._phase(writer, "reference", 0, len(self.forget))
        with torch.profiler.record_function("atwu.before"):
            self.ref_nll = answer_nll(
                self.loaded.model,
                self.forget,
                self.pad_id,
                cfg.forget_batch_size,
                lambda done, total: self._phase(writer, "reference", done, total),
            )
            self.before = BeforeRecord({s.record_id: torch.exp(-n).tolist() for s, n in zip(self.forget, self.ref_nll)})
            writer.append(self.before)
            self._phase(writer, "before", 0, sum(len(s.samples) for s in self._splits()))
            return evaluation.quality(
                self.loaded.model,
                self.loaded,
                self._splits(),
                cfg,
                lambda done, total: self._evaluated(writer, cancel, "before", done, total),
                memo_key="before",
            )[0]

    def _finish(
        self,
        writer: RunWriter,
        trained: models.Trainable,
        before_quality: dict,
        train_seconds: float,
        cancel: CancelToken,
    ) -> None:
        """Final pass, checks, saved adapter and scorer, quality after (a cancel stops it: the run ends cancelled
        without it), metrics.json."""
        cfg = self.config
        self._phase(writer, "final", 0, len(self.forget))
        final = self._final_pass(trained.model, lambda done, total: self._phase(writer, "final", done, total))
        writer.append(final)
        self._check_trained(trained.model, final)
        writer.check()  # save_pretrained would re-create a vanished run folder's path
        self._save_model(trained.model)
        self.method.scheme.finish()
        after, answers = None, {}
        if self.state == "completed":
            try:
                after, answers = evaluation.quality(
                    trained.model,
                    self.loaded,
                    self._splits(),
                    cfg,
                    lambda done, total: self._evaluated(writer, cancel, "after", done, total),
                )
            except evaluation.Cancelled:
                self.state = "cancelled"
        self.metrics = evaluation.judge(
            before_quality, after, self.before.probs, final.scores, final.probs, self.records, self.forget, cfg
        )
        if after:
            self.metrics |= evaluation.after_extras(
                cfg, trained.model, self.loaded.tokenizer, after, answers, self._splits()[0], self.dataset.forget,
                self.before.probs,
            )  # fmt: skip
        seconds = self.step_seconds
        self._lap()
        phases = dict(self.status.phase_seconds)
        self.metrics["timing"] = {
            "total_seconds": round(sum(phases.values()), 3),
            "training_seconds": round(train_seconds, 3),
            "phase_seconds": phases,
            "mean_step_seconds": round(sum(seconds) / max(1, len(seconds)), 5),
            "tokens_per_second": round(sum(r.tokens for r in self.records) / max(1e-9, sum(seconds)), 1),
            "peak_memory_mb": round(metrics.peak_memory_mb(model_device(trained.model)), 1),
            "steps": self.steps_done,
        }
        writer.write_json("metrics.json", self.metrics)
        self.status.state = self.state
        self._phase(writer, "done", 0, 0)

    @contextlib.contextmanager
    def _outcome(self, writer: RunWriter) -> Iterator[None]:
        """Whatever ends the job, status.json says how: cancelled (a stopped consumer or Ctrl-C) or failed."""
        try:
            yield
        except evaluation.Cancelled:  # during the evaluation before training: nothing trained, nothing to keep
            self._stop(writer, "cancelled", None)
        except (GeneratorExit, KeyboardInterrupt) as err:
            why = "interrupted (Ctrl-C)" if isinstance(err, KeyboardInterrupt) else None
            self._stop(writer, "cancelled", why)
            raise
        except BaseException as err:
            message = str(err) if isinstance(err, JobError) else f"{type(err).__name__}: {err}"
            self._stop(writer, "failed", message)
            if isinstance(err, JobError):
                raise
            raise JobError(message) from err

    def _stop(self, writer: RunWriter, state: str, error: str | None) -> None:
        self.state = state
        self.status.state, self.status.error, self.status.steps_done = state, error, self.steps_done
        with contextlib.suppress(OSError):  # e.g. a full disk: the original error is what the caller must see
            writer.status(self.status, check=False)  # into the claimed folder, even if it was moved

    def _evaluated(self, writer: RunWriter, cancel: CancelToken, phase: str, done: int, total: int) -> None:
        """An evaluation's progress; stops it (evaluation.Cancelled) once any process was cancelled."""
        if distributed.any_rank(cancel.cancelled):
            raise evaluation.Cancelled
        self._phase(writer, phase, done, total)

    def _phase(self, writer: RunWriter, phase: str, done: int, total: int) -> None:
        self._lap()
        self.status.phase, self.status.phase_done, self.status.phase_total = phase, done, total
        self.status.steps_done = self.steps_done
        writer.status(self.status)
        if self.on_status is not None:
            self.on_status(self.status)

    def _lap(self) -> None:
        """Add the time since the last status write to the phase the job was in (readers calibrate ETAs on it)."""
        now, seconds = time.perf_counter(), self.status.phase_seconds
        seconds[self.status.phase] = round(seconds.get(self.status.phase, 0.0) + now - self._tick, 3)
        self._tick = now

    # ------------------------------------------------------------------------------------------ pieces

    def _write_header(self, writer: RunWriter) -> None:
        created = datetime.now(timezone.utc).isoformat(timespec="seconds")
        writer.write_json(
            "config.json",
            {
                **self.config.to_dict(),
                "versions": _versions(),
                "created": created,
                "model_info": asdict(self.loaded.info),
            },
        )
        writer.write_json(
            "samples.json",
            [SampleRecord.from_encoded(s, r).to_json() for s, r in zip(self.forget, self.dataset.forget)],
        )

    def _splits(self) -> list[evaluation.Split]:
        return evaluation.splits(self.config, (self.dataset.forget, self.forget), (self.dataset.retain, self.retain))

    def _trainable(self) -> contextlib.AbstractContextManager[models.Trainable]:
        cfg = self.config
        return models.trainable(
            self.loaded, full=cfg.full, rank=cfg.lora_rank, alpha=cfg.lora_alpha, targets=cfg.lora_targets,
            top_layers=cfg.lora_layers, gradient_checkpointing=cfg.gradient_checkpointing,
            lora_fp32=cfg.lora_dtype == "float32",
        )  # fmt: skip

    def _prepare_context(self, model: torch.nn.Module) -> PrepareContext:
        cfg = self.config
        return PrepareContext(
            model, self.loaded.tokenizer, self.forget, self.dataset.forget, cfg.steps, cfg.max_length,
            cfg.chat_template, self.run_dir,
        )  # fmt: skip

    def _update(
        self, loss: torch.Tensor, params: list[torch.nn.Parameter], optimizer: torch.optim.Optimizer,
        schedule: torch.optim.lr_scheduler.LambdaLR,
    ) -> torch.Tensor:  # fmt: skip
        """Backward (loss-scaled for a float16 model), gradients summed over processes, clipped at norm 1, one AdamW
        step; returns the gradient norm (0-dim, on the device). Nothing here waits for the device: a non-finite loss
        or gradient is caught on the step's read-out (`_check_finite`), after this update (the job fails then, and
        the diverged adapter is never saved)."""
        with torch.profiler.record_function("atwu.update"):
            optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
            distributed.all_reduce_grads(params)
            self.scaler.unscale_(optimizer)
            grad_norm = torch.nn.utils.clip_grad_norm_(params, 1.0)
            self.scaler.step(optimizer)  # skipped (and the scale lowered) when float16 gradients overflowed
            self.scaler.update()
            schedule.step()
            return grad_norm

    def _check_finite(self, step: int, loss: float, grad_norm: float) -> None:
        """Fail on a non-finite loss, or on non-finite gradients unless the loss scaler is there to skip them."""
        if not math.isfinite(loss):
            raise JobError(f"step {step}: the loss is {loss}; lower the learning rate or gamma.")
        if not math.isfinite(grad_norm) and not self.scaler.is_enabled():
            raise JobError(f"step {step}: the gradient norm is {grad_norm}; lower the learning rate or gamma.")

    def _optimizer(
        self, params: list[torch.nn.Parameter]
    ) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
        """AdamW with linear warm-up then linear decay to 0 over the job's steps (and the loss scaler a float16
        model needs: its LoRA weights are float32, so their gradients can be unscaled). Fused on CPU and CUDA: one
        kernel for all parameters, its step counters on the device (the unfused one reads them on the host)."""
        cfg = self.config
        device, fp16 = params[0].device, self.loaded.info.dtype == "float16"
        self.scaler = torch.amp.GradScaler(device.type, enabled=fp16 and not cfg.full)
        if self.scaler.is_enabled() and params[0].dtype == torch.float16:
            raise JobError(
                "lora_dtype=model on a float16 model: the loss scaler cannot unscale float16 LoRA gradients; "
                "use dtype=bfloat16, or lora_dtype=float32."
            )
        fused = device.type in ("cpu", "cuda") or None
        optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, fused=fused)
        warmup = max(1, int(cfg.warmup_ratio * cfg.steps))
        schedule = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda k: min((k + 1) / warmup, max(0.0, (cfg.steps - k) / max(1, cfg.steps - warmup)))
        )
        return optimizer, schedule

    def _forward(self, model: torch.nn.Module, index: list[int]) -> Forward:
        """A forget batch's forward with what the scheme asked for, and the loaded model's NLL of the same tokens."""
        with torch.profiler.record_function("atwu.forward"):
            fw = forward(model, self.forget, index, self.pad_id, self.method.scheme.needs)
        fw.ref_nll = fw.scatter_rows([self.ref_nll[i] for i in index])
        return fw

    @staticmethod
    def _batch(rng: random.Random, n: int, size: int) -> list[int]:
        return list(range(n)) if n <= size else sorted(rng.sample(range(n), size))

    def _retain_loss(self, trained: models.Trainable, rng: random.Random) -> tuple[torch.Tensor, int]:
        """The retain objective on a retain batch: NLL, or KL to the reference (`ref`), or nothing."""
        device = model_device(trained.model)
        if self.method.alpha == 0:
            return torch.zeros((), device=device), 0
        index = self._batch(rng, len(self.retain), self.config.retain_batch_size)
        kl = self.method.retain_loss == "kl"
        with torch.profiler.record_function("atwu.retain"):
            fw = forward(trained.model, self.retain, index, self.pad_id, ForwardNeeds(logprobs=kl))
            if not kl:
                return losses.masked_mean(fw.nll, fw.mask), fw.tokens
            with torch.no_grad(), trained.ref() as ref:
                ref_fw = forward(ref, self.retain, index, self.pad_id, ForwardNeeds(logprobs=True))
            return losses.retain_kl(fw.logprobs, ref_fw.logprobs, fw.mask), fw.tokens

    def _read(
        self, fw: Forward, weights: TokenWeights, scalars: dict[str, torch.Tensor | float]
    ) -> tuple[dict[str, float], tuple[TokenValues, TokenValues, TokenValues]]:
        """The batch's values the host needs, in one device -> host copy: the 0-dim tensors among `scalars` (floats
        pass through), and (scores, loss weights, probabilities) per sample, answer tokens only."""
        at = fw.positions
        names = [k for k, v in scalars.items() if isinstance(v, torch.Tensor)]
        per_token = torch.stack([weights.scores, weights.loss, torch.exp(-fw.nll)]).detach()[:, at.rows, at.cols]
        packed = torch.cat([*(scalars[k].detach().float().reshape(1) for k in names), per_token.float().flatten()])
        flat = self._readout.read(packed)  # [len(names) + 3 N]
        read = {k: v if isinstance(v, float) else flat[names.index(k)] for k, v in scalars.items()}
        ids = [self.forget[i].record_id for i in fw.sample_index]
        n = sum(at.lengths)
        rows = (flat[len(names) + j * n : len(names) + (j + 1) * n] for j in range(3))
        return read, tuple(dict(zip(ids, at.split(values))) for values in rows)  # type: ignore[return-value]

    def _final_pass(self, model: torch.nn.Module, progress: Callable[[int, int], None]) -> FinalRecord:
        final = FinalRecord(self.steps_done, {}, {}, {})
        with evaluating(model):
            for index in batches(len(self.forget), self.config.forget_batch_size):
                fw = self._forward(model, index)
                _, values = self._read(fw, self.method.scheme.weigh(fw), {})
                for target, batch_values in zip((final.scores, final.loss_weights, final.probs), values):
                    target.update(batch_values)
                progress(len(final.scores), len(self.forget))
        return final

    def _check_trained(self, model: torch.nn.Module, final: FinalRecord) -> None:
        """Fail rather than report a destroyed model as a result: non-finite weights, or a model that gives
        every token the same probability 1/V (what a blown-up update leaves)."""
        if any(not torch.isfinite(p).all() for p in model.parameters() if p.requires_grad):
            raise JobError("the trained weights are not finite (the last updates diverged); lower the learning rate.")
        vocab = self.loaded.info.vocab_size
        probs = [p for values in final.probs.values() for p in values]
        if probs and all(0.5 / vocab < p < 2.0 / vocab for p in probs):
            raise JobError(
                f"the model collapsed: every forget token has probability ~1/{vocab} after training "
                "(the updates diverged); lower the learning rate or gamma."
            )

    def _save_model(self, model: torch.nn.Module) -> None:
        """The adapter (peft format) or, with --full, the model and tokenizer; swapped into place whole."""
        target = self.run_dir / ("model" if self.config.full else "adapter")
        tmp = self.run_dir / f".{target.name}.tmp"
        try:
            model.save_pretrained(str(tmp), safe_serialization=True)
            if self.config.full:
                self.loaded.tokenizer.save_pretrained(str(tmp))
            set_file_modes(tmp)
            replace_dir(tmp, target)
        except Exception as err:
            shutil.rmtree(tmp, ignore_errors=True)
            raise JobError(f"could not save the {target.name} to {target}: {err}") from err


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


def run_job(config: JobConfig, **kwargs) -> UnlearningJob:
    """Run a job to completion (no live consumer) and return it, with `.metrics` and `.run_dir`."""
    job = UnlearningJob(config, **kwargs)
    job.run()
    return job
