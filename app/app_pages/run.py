"""Run page: configure a job, start or cancel it, watch its token scores and forgetting live, see its results."""

from __future__ import annotations

from pathlib import Path

import streamlit as st

from app import links, session, state
from app.components.results import results_card
from app.run_views import progress_panel, run_detail
from app.untrusted import isolated, md, snapshot
from atwu_core.config import METHODS, PRESETS, ParamSpec, default_preset, make_config, method_params, resolve_params
from atwu_core.run_table import run_id
from atwu_core.runs import list_runs

REFRESH_S = 1.0
JOB_SETTINGS = {  # integer JobConfig fields worth changing from the app
    "forget_batch_size": "Forget samples per step.",
    "retain_batch_size": "Retain samples per step.",
    "lora_rank": "LoRA rank.",
    "lora_alpha": "LoRA alpha (scale = alpha / rank).",
    "lora_layers": "LoRA on the top N decoder blocks only (empty: all); backpropagation stops below them.",
    "max_length": "Longest prompt + answer in tokens; longer samples are truncated.",
    "eval_max_samples": "Forget and retain samples scored before/after at the end (fewer = faster finish).",
    "max_new_tokens": "Greedy answers stop at EOS or after this many new tokens (200: TOFU's and open-unlearning's).",
}


def param_widget(spec: ParamSpec, default: object, key: str) -> object:
    """One input for a method hyperparameter, typed by its default."""
    if spec.choices:
        return st.selectbox(spec.name, spec.choices, index=spec.choices.index(default), help=spec.help, key=key)
    if isinstance(default, bool):
        return st.checkbox(spec.name, value=default, help=spec.help, key=key)
    if isinstance(default, int):
        return int(st.number_input(spec.name, value=default, step=1, help=spec.help, key=key))
    if isinstance(default, float):
        return float(st.number_input(spec.name, value=default, format="%g", help=spec.help, key=key))
    return st.text_input(spec.name, value=str(default), help=spec.help, key=key)


def settings() -> dict:
    """The job settings widgets; returns make_config's arguments."""
    c1, c2 = st.columns([2, 1])
    method = c1.selectbox("Method", list(METHODS), key="method", help="The unlearning method.")
    c1.caption(METHODS[method].description)
    model = session.model_spec()
    chosen = default_preset(model)
    preset = c2.selectbox(
        "Preset",
        list(PRESETS),
        index=list(PRESETS).index(chosen.name),
        key=f"preset_{model}",
        help="demo: fast settings for the tiny demo model; smollm2: for SmolLM2 on a CPU; paper: the published ones.",
    )
    c2.caption(f"Default for this model: `{chosen.name}` ({chosen.reason}).")
    base = make_config(method, preset)
    c1, c2, c3 = st.columns(3)
    steps = int(c1.number_input("Steps", 1, 10_000, base.steps, key=f"steps_{preset}", help="Optimiser steps."))
    lr = float(
        c2.number_input(
            "Learning rate",
            1e-7,
            1.0,
            base.lr,
            format="%g",
            key=f"lr_{preset}",
            help="LoRA learning rate (linear warm-up, then decay).",
        )
    )
    seed = int(c3.number_input("Seed", 0, 2**31 - 1, base.seed, key="seed", help="Seeds batching and initialisation."))
    with st.expander("Job settings"):
        cols = st.columns(3)
        job = {}
        for k, (name, text) in enumerate(JOB_SETTINGS.items()):
            value = cols[k % 3].number_input(
                name.replace("_", " "), 1, 100_000, getattr(base, name), step=1, help=text, key=f"job_{name}_{preset}"
            )
            job[name] = None if value is None else int(value)
    defaults = resolve_params(method, preset)
    with st.expander(f"{method} hyperparameters ({len(defaults)})"):
        cols = st.columns(3)
        params = {}
        for k, spec in enumerate(method_params(method)):
            with cols[k % 3]:
                params[spec.name] = param_widget(spec, defaults[spec.name], f"p_{method}_{preset}_{spec.name}")
    return {"method": method, "preset": preset, "params": params, "steps": steps, "lr": lr, "seed": seed, **job}


def start(arguments: dict) -> None:
    """Queue a job on the session's model and data (it runs in a worker process); bad settings become messages."""
    try:
        config = make_config(**arguments, model=session.model_spec(), data=session.data_label())
        job = state.jobs().submit(config, session.current_data())
    except Exception as err:  # noqa: BLE001 - bad settings or data: shown, the app stays usable
        st.error(f"Could not start the job: {md(err)}")
        return
    session.follow_run(str(job.run_dir))
    links.show(run=run_id(job.run_dir), sample=None)  # the link names the new run from now on
    st.rerun()  # redraw everything (the sidebar too) with the job queued or running


def queue_panel(run_dir: str) -> bool:
    """The queue as this run sees it: whether it waits, behind which jobs; True while it waits."""
    queue = state.jobs()
    waiting = [str(j.run_dir) for j in queue.waiting()]
    if run_dir not in waiting:
        return False
    running = queue.running()
    ahead = waiting.index(run_dir) + (running is not None)
    st.progress(0.0, text=f"queued · {ahead} job(s) ahead")
    st.info(
        f"Run {md(Path(run_dir).name)} waits its turn: jobs run one at a time"
        + (f"; now running {md(running.run_dir.name)}." if running else ".")
    )
    return True


def live_view(run_dir: str) -> None:
    """Re-read the run folder every REFRESH_S seconds while its job waits or runs (the job never calls Streamlit)."""
    live = state.jobs().tracks(run_dir)

    @st.fragment(run_every=REFRESH_S if live else None)
    def view() -> None:
        if queue_panel(run_dir):
            return
        if not (Path(run_dir) / "config.json").is_file():
            st.progress(0.0, text="running · starting the worker process, loading the model and data")
            return
        snap = snapshot(run_dir)  # only the records appended since the last refresh are parsed
        if snap is None:
            return
        st.subheader(f"Run {md(Path(run_dir).name)}")
        with isolated(run_dir):
            progress_panel(snap)
            if snap.status.finished:
                results_card(snap.metrics, run_dir, key="run")
            if not snap.step_records:
                st.info("The first step comes once the model is loaded and evaluated before unlearning (see above).")
            else:
                run_detail(snap, key="run_view")
        if live and not state.jobs().tracks(run_dir):
            st.rerun(scope="app")  # the job ended: one full rerun stops the polling

    view()


st.title("Run")
st.markdown(
    "Unlearn the forget set from the model with one method and watch, token by token, what the method scores "
    "and what the model actually forgets."
)
st.caption(
    f"Model **{md(session.model_spec())}** · data **{md(session.data_label())}** "
    "(change them on the Model and Data pages)"
)
arguments = settings()
latest = state.jobs().last  # a new tab or a refresh finds the server's latest job
current = session.followed_run() or (str(latest.run_dir) if latest else None)
if st.query_params.get("run") not in (None, run_id(current or "")):  # a link to another run opens that run
    current = links.run_from_url(r["run_dir"] for r in list_runs()) or current
cancellable = current is not None and state.jobs().tracks(current)
c1, c2, _ = st.columns([1, 1, 4])
if c1.button("Run", type="primary", key="run", icon=":material/play_arrow:"):
    start(arguments)
if c2.button(
    "Cancel",
    key="cancel",
    icon=":material/stop:",
    disabled=not cancellable,
    help="Stop this run's job after its current step, or take it out of the queue."
    if cancellable
    else "This run's job is not running or queued.",
):
    st.info("Cancelling …" if state.jobs().cancel(current) else "This run's job is not running or queued.")
if current:
    session.follow_run(current)
    links.show(run=run_id(current))
    live_view(current)
else:
    st.info(
        "Press **Run** to unlearn the demo world's forget people and watch, token by token, what is scored "
        "and what is forgotten."
    )
