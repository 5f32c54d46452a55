"""Run page: configure a job, start or cancel it, watch its token scores and forgetting live, see its results."""

from __future__ import annotations

from pathlib import Path

import streamlit as st

from app import links, session, state
from app.components.results import results_card
from app.run_views import progress_panel, run_detail
from app.untrusted import isolated, md, snapshot
from atwu_core.config import (
    METHODS,
    PRESETS,
    Setting,
    default_preset,
    job_settings,
    make_config,
    method_params,
    split_overrides,
)
from atwu_core.run_table import run_id
from atwu_core.runs import list_runs

REFRESH_S = 1.0
JS_SAFE = 2**53 - 1  # the browser's number inputs hold integers up to this
MAIN_SETTINGS = ("steps", "lr", "seed")  # beside the method and preset
JOB_SETTINGS = (  # in "Job settings"; any other one as a `key=value` line
    "forget_batch_size",
    "retain_batch_size",
    "lora_rank",
    "lora_alpha",
    "lora_layers",
    "max_length",
    "eval_max_samples",
    "max_new_tokens",
)


def setting_widget(s: Setting, value: object, key: str) -> object:
    """One input for a job setting or method parameter: its label, help, choices and bounds from the field's
    metadata (`settings.param`); text goes through the setting's own parser."""
    label, text = s.name.replace("_", " "), f"{s.help} [{s.allowed}]"
    if s.choices:
        return st.selectbox(label, s.choices, index=s.choices.index(value), help=text, key=key)
    if s.kind is bool:
        return st.checkbox(label, value=value, help=text, key=key)
    if s.kind in (int, float):
        unbounded = -JS_SAFE if s.kind is int else None
        low = s.kind(s.minimum) if s.minimum is not None else unbounded
        high = s.kind(min(s.maximum, JS_SAFE)) if s.maximum is not None else None if unbounded is None else JS_SAFE
        number = st.number_input(
            label,
            low,
            high,
            None if value is None else s.kind(value),
            step=1 if s.kind is int else None,
            format=None if s.kind is int else "%g",
            placeholder="none" if s.optional else None,
            help=text,
            key=key,
        )
        return None if number is None else s.kind(number)
    return s.parse(st.text_input(label, value=s.text(value) if value is not None else "", help=text, key=key))


def settings() -> tuple[dict, str]:
    """The job settings widgets; returns make_config's arguments and the `key=value` lines for the rest."""
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
    base, job_fields = make_config(method, preset), job_settings()
    job = {}
    for col, name in zip(st.columns(len(MAIN_SETTINGS)), MAIN_SETTINGS, strict=True):
        with col:
            job[name] = setting_widget(job_fields[name], getattr(base, name), f"{name}_{preset}")
    with st.expander("Job settings"):
        cols = st.columns(3)
        for k, name in enumerate(JOB_SETTINGS):
            with cols[k % 3]:
                job[name] = setting_widget(job_fields[name], getattr(base, name), f"job_{name}_{preset}")
        chosen_elsewhere = (*MAIN_SETTINGS, *JOB_SETTINGS, "model", "data", "method", "preset", "params")
        others = ", ".join(name for name in job_fields if name not in chosen_elsewhere)
        lines = st.text_area(
            "Other settings",
            key=f"job_lines_{preset}",
            placeholder="dtype=bfloat16\nchat_template=true",
            help="One key=value per line, as `atwu unlearn --set` takes them (they win over the inputs above): "
            f"{others}, or a method hyperparameter.",
        )
    params = {}
    with st.expander(f"{method} hyperparameters ({len(base.params.to_json())})"):
        cols = st.columns(3)
        for k, s in enumerate(method_params(method)):
            with cols[k % 3]:
                params[s.name] = setting_widget(s, getattr(base.params, s.name), f"p_{method}_{preset}_{s.name}")
    return {"method": method, "preset": preset, "params": params, **job}, lines


def start(arguments: dict, lines: str) -> None:
    """Queue a job on the session's model and data (it runs in a worker process); bad settings become messages."""
    try:
        job, params = split_overrides([line.strip() for line in lines.splitlines() if line.strip()])
        arguments = {**arguments, **job, "params": {**arguments["params"], **params}}
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
arguments, lines = settings()
latest = state.jobs().last  # a new tab or a refresh finds the server's latest job
current = session.followed_run() or (str(latest.run_dir) if latest else None)
if st.query_params.get("run") not in (None, run_id(current or "")):  # a link to another run opens that run
    current = links.run_from_url(r["run_dir"] for r in list_runs()) or current
cancellable = current is not None and state.jobs().tracks(current)
c1, c2, _ = st.columns([1, 1, 4])
if c1.button("Run", type="primary", key="run", icon=":material/play_arrow:"):
    start(arguments, lines)
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
