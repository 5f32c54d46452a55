"""The one unlearning loop every method runs, streaming a record per step to a run folder.

    before:  the loaded model's answer quality and per-token NLL (the reference every method reads)
    step:    batch -> forward -> weigh (a learning scheme learns here) -> losses -> update -> record
    after:   a final pass over every forget sample, the saved adapter, quality after, metrics.json

The loaded model is shared with its owner (the app caches it): `models.trainable` wraps it in LoRA (or trains a
copy with --full) and always unwraps it again, so a failed or cancelled job leaves the model untouched.
"""

from __future__ import annotations

import contextlib
import random
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import torch

from atwu_core import distributed, evaluation, models
from atwu_core.cancel import CancelToken
from atwu_core.config import JobConfig
from atwu_core.data import Dataset
from atwu_core.forward import Forward, ForwardNeeds, answer_nll, batches, forward, random_batch
from atwu_core.generation import evaluating, model_device, pad_token_id
from atwu_core.job_end import check_trained, judged, save_model, score_ema, timing
from atwu_core.job_error import JobError
from atwu_core.job_setup import set_up
from atwu_core.metrics_record import Metrics
from atwu_core.optimiser import Optimiser
from atwu_core.readout import BatchReadout
from atwu_core.recorder import RunRecorder, recorder_for
from atwu_core.records import TOKEN_MAPS, BeforeRecord, FinalRecord, SampleRecord, Status, StepRecord
from atwu_core.weighting import PrepareContext

__all__ = ["JobError", "UnlearningJob", "run_job"]


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
        setup = set_up(config, loaded, dataset, run_dir)
        self.config, self.run_dir, self.method, self.dataset = config, setup.run_dir, setup.method, setup.dataset
        self.loaded, self.forget, self.retain = setup.loaded, setup.forget, setup.retain
        self._scratch = setup.scratch
        self.pad_id = pad_token_id(self.loaded.tokenizer)
        self.steps_done = 0
        self.records: list[StepRecord] = []
        self.step_seconds: list[float] = []
        self.ref_nll: list[torch.Tensor] = []  # per forget sample: answer-token NLL under the loaded model
        self._read = BatchReadout(self.forget)  # the step's one host sync
        self.before: BeforeRecord | None = None
        self.metrics: Metrics | None = None
        self.recorder: RunRecorder | None = None  # made when the job starts; it holds the status (and state)
        self.optimiser: Optimiser | None = None
        self.on_status: Callable[[Status], None] | None = None  # told of every status write (the CLI's bars)
        self._loading_seconds = time.perf_counter() - started

    @property
    def status(self) -> Status | None:
        return self.recorder.status if self.recorder is not None else None

    @property
    def state(self) -> str:
        """created, running, completed, cancelled or failed: the status's state, the one place it is kept."""
        return self.recorder.status.state if self.recorder is not None else "created"

    # ------------------------------------------------------------------------------------------ the loop

    def stream(self, cancel: CancelToken | None = None) -> Iterator[StepRecord]:
        """Run the job; yields after every step. Honours `cancel` before each step."""
        cfg, method, scheme = self.config, self.method, self.method.scheme
        cancel = cancel or CancelToken()
        rec = self.recorder = recorder_for(
            distributed.is_main(), self.run_dir, cfg.steps, self._loading_seconds, self.on_status
        )
        with contextlib.closing(rec), self._outcome(rec), self.loaded.lock:
            samples = [SampleRecord.from_encoded(s, r) for s, r in zip(self.forget, self.dataset.forget)]
            rec.header(cfg, self.loaded.info, samples)
            before_quality = self._before(rec, cancel)
            torch.manual_seed(cfg.seed)
            rng = random.Random(cfg.seed)
            with self._trainable() as trained, contextlib.ExitStack() as compiled:
                model = trained.model
                scheme.prepare(self._prepare_context(model))
                params = [p for p in model.parameters() if p.requires_grad]
                opt = self.optimiser = Optimiser(params, cfg, self.loaded.info.dtype)
                rec.phase("training", 0, cfg.steps, 0)
                model.train()
                t_start = time.perf_counter()
                compiled.enter_context(models.compiled_blocks(model, cfg.compile))  # the training steps only
                while self.steps_done < cfg.steps and not distributed.any_rank(cancel.cancelled):
                    t0, step = time.perf_counter(), self.steps_done + 1
                    # forward a forget batch and a retain batch (with its loss)
                    fw = self._forward(model, random_batch(rng, len(self.forget), cfg.forget_batch_size))
                    retain_fw, retain_loss = self._retain(trained, rng)
                    # the scheme weighs the forget tokens (and learns, if it does, from both batches)
                    weights, logged = scheme.step(fw, step, retain_fw)
                    # the method's loss: gamma * forget + alpha * retain
                    forget_loss = method.forget_loss(fw, weights.loss)
                    loss = method.gamma * forget_loss + method.alpha * retain_loss
                    retain_tokens = retain_fw.tokens if retain_fw is not None else 0
                    # the model's update, queued without waiting for the device
                    grad_norm = opt.update(loss)
                    # the record: losses, learning rates, this batch's scores, loss weights and probabilities, read
                    # in the step's one host sync; a non-finite loss or gradient stops the job here
                    self.steps_done = step
                    scalars = {"forget": forget_loss, "retain": retain_loss, "total": loss, **logged}
                    losses_now, values = self._read(fw, weights, {**scalars, "grad_norm": grad_norm})
                    opt.check_finite(step, losses_now["total"], losses_now.pop("grad_norm"))
                    record = StepRecord(
                        step=step, elapsed=time.perf_counter() - t_start, losses=losses_now,
                        lrs={"model": opt.lr, **scheme.learning_rates()}, tokens=fw.tokens + retain_tokens, **values,
                    )  # fmt: skip
                    self.step_seconds.append(time.perf_counter() - t0)
                    self.records.append(record)
                    rec.record(record)
                    rec.phase("training", step, cfg.steps, step)
                    yield record
                compiled.close()
                completed = not distributed.any_rank(cancel.cancelled)
                self._finish(rec, trained, before_quality, time.perf_counter() - t_start, completed, cancel)
                rec.flush()

    def run(self, cancel: CancelToken | None = None) -> Metrics | None:
        """Run to the end (no live consumer); returns the metrics (None if it stopped before them)."""
        for _ in self.stream(cancel):
            pass
        return self.metrics

    # ------------------------------------------------------------------------------------------ phases

    def _before(self, rec: RunRecorder, cancel: CancelToken) -> evaluation.Qualities:
        """Each forget token's NLL under the loaded model (the reference every method reads, and the baseline of
        realised forgetting), and the loaded model's quality (memoised on it)."""
        cfg = self.config
        rec.phase("reference", 0, len(self.forget), 0)
        with torch.profiler.record_function("atwu.before"):
            self.ref_nll = answer_nll(
                self.loaded.model, self.forget, self.pad_id, cfg.forget_batch_size, rec.progress("reference", 0)
            )
            self.before = BeforeRecord(
                probs={s.record_id: torch.exp(-n).tolist() for s, n in zip(self.forget, self.ref_nll)}
            )
            rec.record(self.before)
            rec.phase("before", 0, sum(len(s.samples) for s in self._splits()), 0)
            return evaluation.quality(
                self.loaded.model,
                self.loaded,
                self._splits(),
                cfg,
                evaluation.cancellable(rec.progress("before", 0), cancel),
                memo_key="before",
            )[0]

    def _finish(
        self,
        rec: RunRecorder,
        trained: models.Trainable,
        before_quality: evaluation.Qualities,
        train_seconds: float,
        completed: bool,
        cancel: CancelToken,
    ) -> None:
        """Final pass, checks, saved adapter and scorer, quality after (a completed job; a cancel during it ends the
        job cancelled, judged without it), metrics.json."""
        model, steps, splits = trained.model, self.steps_done, self._splits()
        rec.phase("final", 0, len(self.forget), steps)
        final = self._final_pass(model, rec.progress("final", steps))
        if self.method.scheme.score_ema is not None:
            final.score_ema = score_ema(self.records, final, self.method.scheme.score_ema)
        rec.record(final)
        check_trained(model, final, self.loaded.info.vocab_size)
        rec.check()  # save_pretrained would re-create a vanished run folder's path
        save_model(model, self.loaded.tokenizer, self.run_dir, self.config.full)
        self.method.scheme.finish()
        after = None
        if completed:
            try:
                progress = evaluation.cancellable(rec.progress("after", steps), cancel)
                after = evaluation.quality(model, self.loaded, splits, self.config, progress)
            except evaluation.Cancelled:
                completed = False
        self.metrics = judged(
            self.config, self.loaded, model, splits, (self.dataset.forget, self.forget),
            (before_quality, self.before), final, self.records, after,
        )  # fmt: skip
        self.metrics.timing = timing(rec.phase_seconds(), train_seconds, self.step_seconds, self.records, model)
        rec.metrics(self.metrics)
        rec.end("completed" if completed else "cancelled", steps)

    @contextlib.contextmanager
    def _outcome(self, rec: RunRecorder) -> Iterator[None]:
        """Whatever ends the job, status.json says how: cancelled (a stopped consumer or Ctrl-C) or failed."""
        try:
            yield
        except evaluation.Cancelled:  # during the evaluation before training: nothing trained, nothing to keep
            rec.stop("cancelled", None, self.steps_done)
        except (GeneratorExit, KeyboardInterrupt) as err:
            why = "interrupted (Ctrl-C)" if isinstance(err, KeyboardInterrupt) else None
            rec.stop("cancelled", why, self.steps_done)
            raise
        except BaseException as err:
            message = str(err) if isinstance(err, JobError) else f"{type(err).__name__}: {err}"
            rec.stop("failed", message, self.steps_done)
            if isinstance(err, JobError):
                raise
            raise JobError(message) from err

    # ------------------------------------------------------------------------------------------ pieces

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

    def _forward(self, model: torch.nn.Module, index: list[int]) -> Forward:
        """A forget batch's forward with what the scheme asked for, and the loaded model's NLL of the same tokens."""
        with torch.profiler.record_function("atwu.forward"):
            fw = forward(model, self.forget, index, self.pad_id, self.method.scheme.needs)
        fw.ref_nll = fw.scatter_rows([self.ref_nll[i] for i in index])
        return fw

    def _retain(self, trained: models.Trainable, rng: random.Random) -> tuple[Forward | None, torch.Tensor]:
        """A retain batch's forward (with what the scheme reads from it) and the method's retain loss on it (with
        the reference's forward when it asks); no batch and a zero loss for a method without one."""
        retain = self.method.retain
        if retain is None:
            return None, torch.zeros((), device=model_device(trained.model))
        index = random_batch(rng, len(self.retain), self.config.retain_batch_size)
        needs = ForwardNeeds(logprobs=retain.reference, hidden_layer=self.method.scheme.retain_needs.hidden_layer)
        with torch.profiler.record_function("atwu.retain"):
            fw = forward(trained.model, self.retain, index, self.pad_id, needs)
            ref_fw = None
            if retain.reference:
                with torch.no_grad(), trained.ref() as ref:
                    ref_fw = forward(ref, self.retain, index, self.pad_id, ForwardNeeds(logprobs=True))
            return fw, retain.loss(fw, ref_fw)

    def _final_pass(self, model: torch.nn.Module, progress: evaluation.Progress) -> FinalRecord:
        final = FinalRecord(step=self.steps_done, **{key: {} for key in TOKEN_MAPS})
        with evaluating(model):
            for index in batches(len(self.forget), self.config.forget_batch_size):
                fw = self._forward(model, index)
                _, values = self._read(fw, self.method.scheme.weigh(fw), {})
                for key, batch_values in values.items():
                    getattr(final, key).update(batch_values)
                progress(len(final.scores), len(self.forget))
        return final


def run_job(config: JobConfig, **kwargs) -> UnlearningJob:
    """Run a job to completion (no live consumer) and return it, with `.metrics` and `.run_dir`."""
    job = UnlearningJob(config, **kwargs)
    job.run()
    return job
