"""`atwu`: run unlearning jobs, print their metrics, rebuild the demo, teach a model a dataset, start the app."""

from __future__ import annotations

import argparse
import ipaddress
import itertools
import json
import os
import subprocess
import sys
from pathlib import Path

from atwu_core.config import (
    METHODS,
    PRESETS,
    JobConfig,
    Setting,
    default_preset,
    job_settings,
    make_config,
    method_params,
    split_overrides,
)
from atwu_core.files import ASSETS
from atwu_core.headline import HEADLINE, NOT_RECORDED, not_meaningful
from atwu_core.metrics_record import Metrics


def _fmt(value) -> str:
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def job_config(args: argparse.Namespace) -> JobConfig:
    """The job an `atwu unlearn` command line asks for: its flags over its `--set` pairs, each parsed by its field's
    type (`Setting.parse`), over the preset (by default the model's) over the defaults."""
    job, params = split_overrides(args.set or [])
    for s in job_settings().values():  # one way to set a field: a flag wins over --set
        value = getattr(args, s.name, None) if s.flag else None
        if value is not None:
            job[s.name] = value if isinstance(value, bool) else s.parse(value)
    method, preset = job.pop("method", "atwu"), job.pop("preset", None)
    chosen = default_preset(job.get("model", "demo"))
    if preset is None:
        print(f"preset: {chosen.name} (the default for this model: {chosen.reason}; --preset picks another)")
    return make_config(method, preset or chosen.name, params, **job)


def _unlearn(args: argparse.Namespace) -> int:
    from atwu_core.console import PhaseBars, phase_line
    from atwu_core.job import UnlearningJob

    config = job_config(args)
    if not args.quiet:
        phase_line(f"[loading] model {config.model}, data {config.data}")
    job = UnlearningJob(config, run_dir=args.out)
    print(f"run folder: {job.run_dir}", flush=True)
    bars = job.on_status = None if args.quiet else PhaseBars()
    try:
        for record in job.stream():
            if bars is not None:
                losses = " ".join(f"{k}={_fmt(v)}" for k, v in record.losses.items())
                bars.write(f"step {record.step:4d}/{config.steps}  {record.elapsed:6.1f}s  {losses}")
    finally:
        if bars is not None:
            bars.close()
    _print_metrics(job.metrics)
    return 0


def _print_metrics(metrics: Metrics) -> None:
    """The CLI summary: the headline numbers (`HEADLINE`) a line per metrics.json block, then quality, forget
    quality, model utility and timing; what an older run folder lacks reads "not recorded"."""
    for block, rows in itertools.groupby(HEADLINE, key=lambda h: h.path.split(".")[0]):
        values = {h.key: h.value(metrics) for h in rows}
        missing = [k for k, v in values.items() if v == NOT_RECORDED]
        cols = "  ".join(f"{k}={_fmt(v)}" for k, v in values.items() if k not in missing)
        if missing:
            cols += ("  " if cols else "") + (f"{', '.join(missing)}: " if cols else "") + NOT_RECORDED
        print(f"{block:10s} {cols}")
    if not_meaningful(metrics):
        print("           (forgetting not meaningful: span tokens barely moved; its ranking is noise)")
    for split in ("forget", "retain"):
        if (block := metrics.quality(split)) is not None:
            for when, q in (("before", block.before), ("after", block.after)):
                cols = "  ".join(
                    f"{k}={_fmt(v)}"
                    for k in ("exact", "rouge_l", "prob", "extraction_strength", "exact_memorization", "truth_ratio")
                    if q is not None and (v := getattr(q, k)) is not None
                )
                print(f"{split:7s} {when:6s} {cols or NOT_RECORDED}")
    if (fq := metrics.forget_quality) is not None:
        n = fq.n if fq.n is not None else "not recorded"  # runs written before n was recorded
        value = f"{fq.value:.3g}" if fq.value is not None else "undefined"
        print(f"forget quality (KS p-value vs the retain model, n={n}) = {value}")
    if (mu := metrics.model_utility) is not None:
        print(f"model utility (TOFU) = {_fmt(mu.value)}" + (f"  ({mu.why})" if mu.why else ""))
    if (t := metrics.timing) is not None:
        phases = ", ".join(f"{k} {v:.1f}s" for k, v in t.phase_seconds.items())
        print(
            f"timing  {t.total_seconds:.1f}s total"
            + (f", training {t.training_seconds:.1f}s" if t.training_seconds is not None else "")
            + f", {t.mean_step_seconds:.3f}s/step, {t.tokens_per_second:.0f} tokens/s, "
            f"peak {t.peak_memory_mb:.0f} MB" + (f"\ntiming  phases: {phases}" if phases else "")
        )


def _eval(args: argparse.Namespace) -> int:
    from atwu_core.runs import RunReader

    run = RunReader(args.run_dir)  # its errors name the unreadable file (status.json, config.json, ...)
    if args.recompute:
        from atwu_core.recompute import recompute

        recompute(args.run_dir)
    metrics, status = run.metrics, run.status
    if metrics is None:
        raise ValueError(f"{args.run_dir}: no metrics.json (state: {status.state}, error: {status.error}).")
    if args.json:
        print(json.dumps(metrics.to_json(), indent=1))
    else:
        config = run.config
        print(f"{config.get('method')} on {config.get('model')} / {config.get('data')}: {status.state}")
        _print_metrics(metrics)
    return 0


def _build_demo(args: argparse.Namespace) -> int:
    if args.base == "smollm2":
        from atwu_core.demo_smollm2 import build_demo_smollm2

        report = build_demo_smollm2()
    else:
        from atwu_core.finetune import build_demo

        report = build_demo(args.out or ASSETS, seed=args.seed)
    print(report)
    return 0


def _finetune(args: argparse.Namespace) -> int:
    from atwu_core.console import PhaseBars, phase_line
    from atwu_core.finetune import finetune_dataset_dir

    if args.tiny == (args.model is not None):
        raise ValueError("give exactly one of --tiny or --model M.")
    kwargs = {"seed": args.seed} | ({"steps": args.steps} if args.steps else {})
    bars = None if args.quiet else PhaseBars()
    if bars is not None:
        kwargs |= {"log": bars.write, "progress": lambda step, steps: bars.show("teaching", step, steps)}
    try:
        if args.tiny:
            report = finetune_dataset_dir(args.data, args.out, tiny=True, **kwargs)
        else:
            from atwu_core.models import load_model

            if bars is not None:
                phase_line(f"[loading] model {args.model}")
            loaded = load_model(args.model)
            report = finetune_dataset_dir(
                args.data, args.out, model=loaded.model, tokenizer=loaded.tokenizer, lora=args.lora, **kwargs
            )
    finally:
        if bars is not None:
            bars.close()
    print(report)
    return 0


def _methods(_args: argparse.Namespace) -> int:
    for name, spec in METHODS.items():
        print(f"{name}: {spec.description}")
        for p in method_params(name):
            presets = "".join(
                f"  [{pr.name}: {pr.params[name][p.name]!r}]"
                for pr in PRESETS.values()
                if p.name in pr.params.get(name, {})
            )
            print(f"    {p.name} = {p.default!r}{presets}  {_described(p)}")
    print("\npresets (job settings; method settings shown in [ ] above):")
    for pr in PRESETS.values():
        print(
            f"  {pr.name}: {pr.description}; tuned on {pr.tuned_on}; "
            + ", ".join(f"{k}={v}" for k, v in pr.job.items())
        )
    return 0


APP_ADDRESS, APP_PORT = "127.0.0.1", 8501
APP_MAX_UPLOAD_MB = 20  # .streamlit/config.toml says the same, for `streamlit run` from the repository root


def app_command(address: str = APP_ADDRESS, port: int = APP_PORT) -> list[str]:
    """The Streamlit command line, with every safety setting as a flag: Streamlit reads .streamlit/config.toml only
    from the current folder (and an installed package ships none), and otherwise serves on every interface."""
    main_py = Path(__file__).resolve().parent.parent / "app" / "main.py"
    flags = {
        "server.address": address,
        "server.port": port,
        "server.headless": "true",
        "server.maxUploadSize": APP_MAX_UPLOAD_MB,
        "server.fileWatcherType": "none",
        "browser.gatherUsageStats": "false",
    }
    return [sys.executable, "-m", "streamlit", "run", str(main_py)] + [
        arg for key, value in flags.items() for arg in (f"--{key}", str(value))
    ]


def _is_loopback(address: str) -> bool:
    try:
        return address == "localhost" or ipaddress.ip_address(address).is_loopback
    except ValueError:  # a host name
        return False


def _app(args: argparse.Namespace) -> int:
    if not _is_loopback(args.address):
        print(
            f"atwu: warning: serving on {args.address}:{args.port}; anyone who can reach it can load any file this "
            "user can read as data or a model.",
            file=sys.stderr,
        )
    return subprocess.call(app_command(args.address, args.port))


def _described(s: Setting) -> str:
    """A job setting's help with what it takes (plain text takes anything, so says nothing more)."""
    return s.help + (f" [{s.allowed}]" if s.kind is not str or s.choices or s.optional else "")


def _set_listing() -> str:
    return "\n".join(
        f"  {s.name} = {s.text(s.default)}  {_described(s)}"
        for s in job_settings().values()
        if s.name not in ("method", "preset", "params")
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="atwu", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser(
        "unlearn",
        help="run an unlearning job into a run folder",
        epilog="job settings for --set (method parameters: `atwu methods`):\n" + _set_listing(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    for s in job_settings().values():  # generated from JobConfig's fields: the rerun command uses the same flags
        if s.kind is bool and s.flag:
            p.add_argument(s.option, dest=s.name, action="store_true", default=None, help=_described(s))
        elif s.flag:
            p.add_argument(s.option, dest=s.name, metavar=s.name.upper(), help=_described(s))
    p.add_argument("--out", help="run folder (default: runs/<time>-<method>)")
    p.add_argument(
        "--set",
        action="append",
        metavar="KEY=VALUE",
        help="set a job setting (listed below) or a method parameter; a flag above wins over --set",
    )
    p.add_argument("--quiet", action="store_true", help="no phase lines, progress bars or step lines: only the results")
    p.set_defaults(func=_unlearn)

    p = sub.add_parser("eval", help="print a run's metrics")
    p.add_argument("run_dir", help="a run folder (written by `atwu unlearn` or the app)")
    p.add_argument("--json", action="store_true", help="print metrics.json as it is, instead of a summary")
    p.add_argument(
        "--recompute",
        action="store_true",
        help="re-derive metrics.json from the run folder and its model (today's forms, facts and magnitude)",
    )
    p.set_defaults(func=_eval)

    p = sub.add_parser("build-demo", help="regenerate the demo world and the model that memorised it")
    p.add_argument(
        "--base",
        choices=["tiny", "smollm2"],
        default="tiny",
        help="tiny: a tokenizer and a tiny Llama trained from scratch; smollm2: a LoRA adapter on SmolLM2",
    )
    p.add_argument("--out", help="assets folder (default: the package's assets/; tiny only)")
    p.add_argument("--seed", type=int, default=0, help="seeds the world and the training (default 0; tiny only)")
    p.set_defaults(func=_build_demo)

    p = sub.add_parser("finetune", help="teach a model a dataset folder")
    p.add_argument("--data", required=True, help="a dataset folder (forget.jsonl and retain.jsonl)")
    p.add_argument("--out", required=True, help="folder for the taught model, its tokenizer and training_report.json")
    p.add_argument("--tiny", action="store_true", help="train a tokenizer and a tiny model from scratch")
    p.add_argument("--model", help="start from this model instead ('smollm2', a folder or a hub id)")
    p.add_argument("--lora", action="store_true", help="with --model: train a LoRA adapter and merge it")
    p.add_argument(
        "--steps", type=int, help="most optimiser steps (default 600; stops early once every answer is exact)"
    )
    p.add_argument("--seed", type=int, default=0, help="seeds initialisation and batching (default 0)")
    p.add_argument("--quiet", action="store_true", help="no phase lines or progress bar: only the final report")
    p.set_defaults(func=_finetune)

    p = sub.add_parser("methods", help="list methods and their parameters")
    p.set_defaults(func=_methods)

    p = sub.add_parser("app", help="start the Streamlit app (on 127.0.0.1 unless --address says otherwise)")
    p.add_argument("--address", default=APP_ADDRESS, help="interface to serve on (default: this machine only)")
    p.add_argument("--port", type=int, default=APP_PORT, help=f"port to serve on (default {APP_PORT})")
    p.set_defaults(func=_app)
    return parser


def _is_user_error(err: Exception) -> bool:
    """Errors that mean bad input or a bad environment: one line for the user, no traceback. Imported only when
    an error happens, so that `atwu methods` or `atwu app` do not load the job engine."""
    from atwu_core.data import DataError
    from atwu_core.job import JobError
    from atwu_core.models import ModelLoadError

    return isinstance(err, (DataError, ModelLoadError, JobError, ValueError, FileNotFoundError, FileExistsError))


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if int(os.environ.get("RANK", "0")) > 0:  # a data-parallel job's other processes: rank 0 prints
        sys.stdout = open(os.devnull, "w")  # for the life of the process
    try:
        code = args.func(args)
        sys.stdout.flush()  # a reader that has gone (`atwu methods | head`) shows here, not at exit
        return code
    except KeyboardInterrupt:
        print("atwu: interrupted; the run folder keeps what was recorded.", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # the standard answer (Python's signal docs): send what is left to devnull so the exit flush stays quiet
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except Exception as err:
        if not _is_user_error(err):
            raise
        print(f"atwu: error: {str(err).strip().replace(chr(10), ' ')}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
