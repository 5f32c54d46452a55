"""A job's inputs, checked and loaded before anything runs: the settings validated, this process's role (only
rank 0 writes the run folder), the method built, the data filtered and encoded, the model loaded."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

from atwu_core import distributed, models
from atwu_core.config import JobConfig
from atwu_core.data import Dataset, EncodedSample, encode_records, load_data
from atwu_core.methods import Method, build_method
from atwu_core.runs import RANK_SCRATCH, check_run_dir, new_run_dir, runs_root


@dataclass
class JobSetup:
    """What `UnlearningJob` runs on. `dataset.forget` is the forget set after `forget_ids`."""

    run_dir: Path
    method: Method
    dataset: Dataset
    loaded: models.LoadedModel
    forget: list[EncodedSample]
    retain: list[EncodedSample]
    scratch: tempfile.TemporaryDirectory | None  # a non-main process's run folder (kept alive with the job)


def set_up(
    config: JobConfig,
    loaded: models.LoadedModel | None = None,
    dataset: Dataset | None = None,
    run_dir: str | Path | None = None,
) -> JobSetup:
    """Check the settings and the run folder before the (slow) model load (the model-dependent settings from the
    model's config.json where it is local, else right after loading); fail with what to change."""
    config.validate()
    distributed.init()  # a no-op unless torchrun / accelerate launched several processes
    run_dir, scratch = _run_dir(config, run_dir)
    check_run_dir(run_dir)
    method = build_method(config.method, config.params)
    dataset = _filtered(config, method, dataset or load_data(config.data, config.retain_data))
    settings = (config.lora_targets, config.lora_layers, getattr(config.params, "hidden_layer", None))
    if loaded is None and (skeleton := models.model_skeleton(config.model)) is not None:
        models.check_settings(skeleton, *settings)  # before the weights load, from config.json alone
    loaded = loaded or models.load_model(config.model, device=config.device, dtype=config.dtype)
    models.check_settings(loaded.model, *settings)
    tok = loaded.tokenizer
    forget = encode_records(dataset.forget, tok, config.max_length, config.chat_template)
    retain = encode_records(dataset.retain, tok, config.max_length, config.chat_template)
    return JobSetup(
        run_dir=run_dir, method=method, dataset=dataset, loaded=loaded, forget=forget, retain=retain, scratch=scratch
    )


def _run_dir(config: JobConfig, run_dir: str | Path | None) -> tuple[Path, tempfile.TemporaryDirectory | None]:
    """Rank 0 writes the given (or a new) run folder; the other ranks get a scratch one for what they save, inside
    the run folder (or the runs root when each rank picked its own name), hidden from listings, so a killed rank
    leaves nothing in $TMPDIR."""
    if not distributed.is_main():
        home = Path(run_dir) if run_dir is not None else runs_root()
        home.mkdir(parents=True, exist_ok=True)
        scratch = tempfile.TemporaryDirectory(prefix=f"{RANK_SCRATCH}{distributed.rank()}-", dir=home)
        return Path(scratch.name) / "run", scratch
    return (Path(run_dir) if run_dir is not None else new_run_dir(config.method)), None


def _filtered(config: JobConfig, method: Method, dataset: Dataset) -> Dataset:
    """The forget set cut to `forget_ids`; refused if that leaves nothing, or if the method needs a retain set the
    data lacks."""
    forget = dataset.forget
    if config.forget_ids is not None:
        wanted = set(config.forget_ids)
        forget = [r for r in forget if r.id in wanted]
        if not forget:
            raise ValueError(
                f"none of forget_ids {sorted(wanted)[:5]} is in the forget set "
                f"(its ids look like {dataset.forget[0].id!r})."
            )
    if method.retain is not None and not dataset.retain:
        raise ValueError(
            f"{config.method} uses a retain loss but the data has no retain set; "
            "give retain data or set retain_loss=none."
        )
    return Dataset(dataset.name, forget, dataset.retain, dataset.holdout)
