"""The one unlearning loop every method runs, streaming a record per step to a run folder.

    for each step: forward the forget batch (hidden states if the scheme reads them)
                   weights = scheme.weigh(...)            # how hard each token is pushed
                   L = gamma * forget_loss + alpha * retain_loss;  model update
                   scheme.update(...)                      # ATWU's scorer step, on the same forward
                   record(step, losses, weights, probs)    # appended to records.jsonl, yielded

The loaded model is shared with its owner (the app caches it): the job wraps it in LoRA (or trains a copy
with --full) and always unwraps it again, so a failed or cancelled job leaves the model untouched.
"""

from __future__ import annotations

import copy
import functools
import json
import math
import random
import threading
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator

import torch

from atwu_core import losses, metrics, models
from atwu_core.config import JobConfig
from atwu_core.data import Dataset, encode_records, load_data
from atwu_core.generation import collate, evaluating, pad_token_id
from atwu_core.methods import Method, build_method
from atwu_core.runs import RunWriter, new_run_dir
from atwu_core.weighting import ForgetForward, PrepareContext
from atwu_core.weighting.atwu import scorer_hidden


class JobError(RuntimeError):
    """The job stopped; the run folder's status says why and keeps the records written so far."""


class JobBusyError(RuntimeError):
    """Another job is already running in this process."""


class CancelToken:
    """Set from any thread; the loop checks it before every step."""

    def __init__(self) -> None:
        self._event = threading.Event()

    def cancel(self) -> None:
        self._event.set()

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()


@dataclass
class StepRecord:
    step: int
    elapsed: float
    losses: dict[str, float]
    lrs: dict[str, float]
    tokens: int
    weights: dict[str, list[float]] = field(repr=False)
    probs: dict[str, list[float]] = field(repr=False)

    def to_json(self) -> dict:
        rounded = {k: {sid: [round(x, 5) for x in v] for sid, v in getattr(self, k).items()} for k in ("weights", "probs")}
        return {"type": "step", **asdict(self), **rounded}


def _versions() -> dict[str, str]:
    import peft
    import transformers

    return {"torch": torch.__version__, "transformers": transformers.__version__, "peft": peft.__version__}


class UnlearningJob:
    """Set up a job (model, data, method, run folder); `steps()` runs it and yields a StepRecord per step."""

    def __init__(self, config: JobConfig, *, loaded: models.LoadedModel | None = None, dataset: Dataset | None = None,
                 run_dir: str | Path | None = None):
        self.config = config
        self.method: Method = build_method(config.method, config.params)
        dataset = dataset or load_data(config.data, config.retain_data)
        self.loaded = loaded or models.load_model(config.model, device=config.device, dtype=config.dtype)
        forget = dataset.forget
        if config.forget_ids is not None:
            wanted = set(config.forget_ids)
            forget = [r for r in forget if r.id in wanted]
            if not forget:
                raise ValueError(f"none of forget_ids {sorted(wanted)[:5]} is in the forget set.")
        if self.method.alpha > 0 and not dataset.retain:
            raise ValueError(f"{config.method} uses a retain loss but the data has no retain set; "
                             "give retain data or set retain_loss=none.")
        self.dataset = Dataset(dataset.name, forget, dataset.retain, dataset.holdout)
        tok = self.loaded.tokenizer
        self.forget = encode_records(forget, tok, config.max_length, config.chat_template)
        self.retain = encode_records(dataset.retain, tok, config.max_length, config.chat_template)
        self.pad_id = pad_token_id(tok)
        self.run_dir = Path(run_dir) if run_dir is not None else new_run_dir(config.method)
        self.metrics: dict | None = None
        self.state = "created"

    # ------------------------------------------------------------------------------------------ setup

    def _write_header(self, writer: RunWriter) -> None:
        created = datetime.now(timezone.utc).isoformat(timespec="seconds")
        writer.write_json("config.json", {**self.config.to_dict(), "versions": _versions(), "created": created,
                                          "model_info": asdict(self.loaded.info)})
        writer.write_json("samples.json", [
            {"id": s.record_id, "question": r.question, "answer": r.answer, "tokens": s.answer_tokens,
             "token_ids": s.answer_token_ids, "offsets": s.answer_offsets, "span_mask": [int(m) for m in s.span_mask],
             "has_ground_truth": s.has_ground_truth}
            for s, r in zip(self.forget, self.dataset.forget)
        ])

    def _trainable(self) -> tuple[torch.nn.Module, torch.nn.Module | None]:
        """(model to train, frozen reference for full fine-tuning or None with LoRA)."""
        cfg = self.config
        if cfg.full:
            model = copy.deepcopy(self.loaded.model)
            for p in model.parameters():
                p.requires_grad_(True)
            return model, self.loaded.model
        return models.attach_lora(self.loaded.model, cfg.lora_rank, cfg.lora_alpha, cfg.lora_targets, cfg.lora_layers), None

    def _release(self, model: torch.nn.Module) -> None:
        if not self.config.full:
            self.loaded.model = models.detach_lora(model)

    def _reference_logits(self, model, reference, batch: dict) -> torch.Tensor:
        with torch.no_grad():
            if reference is not None:
                return reference(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
            with models.reference_model(model) as ref:
                return ref(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits

    # ------------------------------------------------------------------------------------------ forward

    def _forget_forward(self, model, index: list[int], ref_seq_nll: torch.Tensor | None) -> tuple[ForgetForward, int]:
        device = next(model.parameters()).device
        batch = {k: v.to(device) for k, v in collate([self.forget[i] for i in index], self.pad_id).items()}
        scheme = self.method.scheme
        out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                    output_hidden_states=scheme.needs_hidden)
        nll, mask = losses.token_nll(out.logits, batch["labels"])
        hidden = scorer_hidden(out.hidden_states[-1], scheme.hidden_position).detach() if scheme.needs_hidden else None
        ref = ref_seq_nll[index].to(device) if ref_seq_nll is not None else None
        fw = ForgetForward(nll=nll, mask=mask, hidden=hidden, sample_index=index, ref_seq_nll=ref)
        return fw, int(batch["attention_mask"].sum())

    def _sequence_nll(self, model) -> torch.Tensor:
        """Summed answer NLL per forget sample under the model as it is now (the reference, before step 1)."""
        out = []
        with evaluating(model):
            for start in range(0, len(self.forget), self.config.forget_batch_size):
                fw, _ = self._forget_forward(model, list(range(start, min(start + self.config.forget_batch_size, len(self.forget)))), None)
                out.append(fw.nll.sum(1).float().cpu())
        return torch.cat(out)

    def _final_pass(self, model, ref_seq_nll) -> tuple[dict, dict]:
        weights, probs = {}, {}
        with evaluating(model):
            for start in range(0, len(self.forget), self.config.forget_batch_size):
                index = list(range(start, min(start + self.config.forget_batch_size, len(self.forget))))
                fw, _ = self._forget_forward(model, index, ref_seq_nll)
                self._collect(fw, self.method.scheme.weigh(fw).scores, weights, probs)
        return weights, probs

    def _collect(self, fw: ForgetForward, scores: torch.Tensor, weights: dict, probs: dict) -> None:
        ids = [self.forget[i].record_id for i in fw.sample_index]
        weights.update(zip(ids, losses.per_sequence(scores, fw.mask)))
        probs.update(zip(ids, losses.per_sequence(torch.exp(-fw.nll.detach()), fw.mask)))

    # ------------------------------------------------------------------------------------------ loop

    def steps(self, cancel: CancelToken | None = None) -> Iterator[StepRecord]:
        """Run the job; yields after every step. Honours `cancel` before each step."""
        cfg, method = self.config, self.method
        cancel = cancel or CancelToken()
        writer = RunWriter(self.run_dir)
        self._write_header(writer)
        writer.status("running", 0, cfg.steps)
        self.state, step, t_start = "running", 0, time.perf_counter()
        step_seconds, tokens_seen = [], 0
        with self.loaded.lock:
            torch.manual_seed(cfg.seed)
            rng = random.Random(cfg.seed)
            model = None
            try:
                model, reference = self._trainable()
                device = next(model.parameters()).device
                ref_seq_nll = self._sequence_nll(model) if method.needs_reference_nll else None
                method.scheme.prepare(PrepareContext(model, self.loaded.tokenizer, self.forget, self.dataset.forget,
                                                     cfg.steps, cfg.max_length, cfg.chat_template))
                params = [p for p in model.parameters() if p.requires_grad]
                optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
                warmup = max(1, int(cfg.warmup_ratio * cfg.steps))
                schedule = torch.optim.lr_scheduler.LambdaLR(
                    optimizer, lambda k: min((k + 1) / warmup, max(0.0, (cfg.steps - k) / max(1, cfg.steps - warmup))))
                model.train()
                for step in range(1, cfg.steps + 1):
                    if cancel.cancelled:
                        step -= 1
                        self.state = "cancelled"
                        break
                    t0 = time.perf_counter()
                    index = self._batch(rng, len(self.forget), cfg.forget_batch_size)
                    fw, n_tokens = self._forget_forward(model, index, ref_seq_nll)
                    weights = method.scheme.weigh(fw)
                    forget_loss = method.forget_loss(fw, weights.loss)
                    loss = method.gamma * forget_loss
                    logged = {"forget": forget_loss.item()}
                    if method.alpha > 0:
                        retain_loss, n_retain = self._retain_loss(model, reference, rng, device)
                        loss = loss + method.alpha * retain_loss
                        logged["retain"] = retain_loss.item()
                        n_tokens += n_retain
                    logged["total"] = loss.item()
                    if not math.isfinite(logged["total"]):
                        raise JobError(f"step {step}: the loss is {logged['total']} (forget {logged['forget']}, "
                                       f"retain {logged.get('retain')}); lower the learning rate or gamma.")
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    torch.nn.utils.clip_grad_norm_(params, 1.0)
                    optimizer.step()
                    schedule.step()
                    scorer_logs = method.scheme.update(fw, step)
                    lrs = {"model": schedule.get_last_lr()[0]}
                    if "scorer_lr" in scorer_logs:
                        lrs["scorer"] = scorer_logs.pop("scorer_lr")
                    logged.update(scorer_logs)
                    record_w, record_p = {}, {}
                    self._collect(fw, weights.scores, record_w, record_p)
                    step_seconds.append(time.perf_counter() - t0)
                    tokens_seen += n_tokens
                    record = StepRecord(step, time.perf_counter() - t_start, logged, lrs, n_tokens, record_w, record_p)
                    writer.append(record.to_json())
                    writer.status("running", step, cfg.steps)
                    yield record
                else:
                    self.state = "completed"
                train_seconds = time.perf_counter() - t_start
                final_w, final_p = self._final_pass(model, ref_seq_nll)
                writer.append({"type": "final", "step": step, "weights": final_w, "probs": final_p})
                self._save_model(model)
                self.metrics = self._evaluate(model, reference, final_w, cancelled=self.state == "cancelled")
                self.metrics["timing"] = {
                    "total_seconds": round(train_seconds, 3),
                    "mean_step_seconds": round(sum(step_seconds) / max(1, len(step_seconds)), 5),
                    "tokens_per_second": round(tokens_seen / max(1e-9, sum(step_seconds)), 1),
                    "peak_memory_mb": round(metrics.peak_memory_mb(device), 1),
                    "steps": len(step_seconds),
                }
                writer.write_json("metrics.json", self.metrics)
                writer.status(self.state, step, cfg.steps)
            except GeneratorExit:  # the consumer stopped iterating: same as a cancel, minus the final pass
                self.state = "cancelled"
                writer.status("cancelled", step, cfg.steps)
                raise
            except BaseException as err:
                self.state = "failed"
                message = str(err) if isinstance(err, JobError) else f"{type(err).__name__}: {err}"
                writer.status("failed", step, cfg.steps, error=message)
                if isinstance(err, (JobError, KeyboardInterrupt)):
                    raise
                raise JobError(message) from err
            finally:
                if model is not None:
                    self._release(model)
                writer.close()

    @staticmethod
    def _batch(rng: random.Random, n: int, size: int) -> list[int]:
        return list(range(n)) if n <= size else sorted(rng.sample(range(n), size))

    def _retain_loss(self, model, reference, rng: random.Random, device) -> tuple[torch.Tensor, int]:
        index = self._batch(rng, len(self.retain), self.config.retain_batch_size)
        batch = {k: v.to(device) for k, v in collate([self.retain[i] for i in index], self.pad_id).items()}
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        if self.method.retain_loss == "kl":
            loss = losses.retain_kl(logits, self._reference_logits(model, reference, batch), batch["labels"])
        else:
            nll, mask = losses.token_nll(logits, batch["labels"])
            loss = losses.masked_mean(nll, mask)
        return loss, int(batch["attention_mask"].sum())

    def _save_model(self, model) -> None:
        target = self.run_dir / ("model" if self.config.full else "adapter")
        tmp = self.run_dir / f".{target.name}.tmp"
        model.save_pretrained(str(tmp), safe_serialization=True)
        if self.config.full:
            self.loaded.tokenizer.save_pretrained(str(tmp))
        tmp.replace(target)

    # ------------------------------------------------------------------------------------------ metrics

    def _evaluate(self, model, reference, final_weights: dict, cancelled: bool) -> dict:
        """Alignment always; forget/retain quality before and after unless the job was cancelled."""
        out: dict = {"alignment": metrics.alignment(final_weights, self.forget)}
        if cancelled:
            return out
        cap = self.config.eval_max_samples
        tok = self.loaded.tokenizer
        splits = {"forget": (self.dataset.forget, self.forget), "retain": (self.dataset.retain, self.retain)}
        for name, (records, samples) in splits.items():
            if not samples:
                continue
            judge = functools.partial(metrics.quality, tokenizer=tok, records=records, samples=samples, max_samples=cap,
                                      chat_template=self.config.chat_template)
            out[name] = {"before": self._quality_before(judge, model, reference, records), "after": judge(model)}
        if self.config.reference and out["forget"]["after"].get("truth_ratios"):
            out["forget_quality"] = self._forget_quality(out["forget"]["after"]["truth_ratios"])
        return out

    def _quality_before(self, judge: functools.partial, model, reference, records: list) -> dict:
        """The loaded model's quality on `records`: the same for every job on this model and data, so computed once."""
        cfg = self.config
        records = [asdict(r) for r in records[: cfg.eval_max_samples]]
        key = ("quality", json.dumps(records, sort_keys=True), cfg.max_length, cfg.chat_template)
        if key not in self.loaded.memo:
            if reference is not None:
                self.loaded.memo[key] = judge(reference)
            else:
                with models.reference_model(model) as ref:
                    self.loaded.memo[key] = judge(ref)
        return copy.deepcopy(self.loaded.memo[key])

    def _forget_quality(self, truth_ratios: list[float]) -> float:
        """TOFU's forget quality: KS test of our truth ratios against a retain-only model's on the same forget set."""
        reference = models.load_model(self.config.reference, device=self.config.device, dtype=self.config.dtype)
        ratios = metrics.truth_ratios(reference.model, reference.tokenizer, self.dataset.forget[: self.config.eval_max_samples],
                                      chat_template=self.config.chat_template)
        return metrics.forget_quality(truth_ratios, ratios)


def run_job(config: JobConfig, **kwargs) -> UnlearningJob:
    """Run a job to completion (no live consumer) and return it, with `.metrics` and `.run_dir`."""
    job = UnlearningJob(config, **kwargs)
    for _ in job.steps():
        pass
    return job


class BackgroundJob:
    """A job on a worker thread, for UIs: at most one per process, cancellable, never calls the UI."""

    _active: "BackgroundJob | None" = None
    _guard = threading.Lock()

    def __init__(self, job: UnlearningJob):
        self.job = job
        self.run_dir = job.run_dir
        self.error: str | None = None
        self._cancel = CancelToken()
        self._thread = threading.Thread(target=self._run, name=f"atwu-job-{job.run_dir.name}", daemon=True)

    @classmethod
    def start(cls, config: JobConfig, loaded: models.LoadedModel, dataset: Dataset | None = None,
              run_dir: str | Path | None = None) -> "BackgroundJob":
        with cls._guard:
            if cls._active is not None and cls._active.is_alive():
                raise JobBusyError(f"a job is already running ({cls._active.run_dir}); wait for it or cancel it first.")
            bg = cls(UnlearningJob(config, loaded=loaded, dataset=dataset, run_dir=run_dir))
            cls._active = bg
            bg._thread.start()
            return bg

    @classmethod
    def active(cls) -> "BackgroundJob | None":
        return cls._active

    def _run(self) -> None:
        try:
            for _ in self.job.steps(self._cancel):
                pass
        except Exception as err:  # recorded in status.json too; kept here for the UI
            self.error = str(err)

    def cancel(self) -> None:
        self._cancel.cancel()

    def is_alive(self) -> bool:
        return self._thread.is_alive()

    def join(self, timeout: float | None = None) -> None:
        self._thread.join(timeout)
