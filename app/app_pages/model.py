"""Model page: pick the model every other page uses, load it with progress, show what was loaded."""

from __future__ import annotations

import streamlit as st

from app import session, state
from atwu_core.models import LoadedModel

SOURCES = {
    "Embedded demo model": "demo",
    "SmolLM2-135M taught the demo world": "demo-smollm2",
    "SmolLM2-135M-Instruct": "smollm2",
    "Local folder or .gguf file": None,
    "Hugging Face hub id": None,
}


def show_info(loaded: LoadedModel) -> None:
    info = loaded.info
    cols = st.columns(4)
    cols[0].metric("Parameters", f"{info.n_params / 1e6:.1f} M")
    cols[1].metric("Device", info.device)
    cols[2].metric("Dtype", info.dtype)
    cols[3].metric("Vocabulary", f"{info.vocab_size:,}")
    st.markdown(f"**Architecture** `{info.architecture}` · **Source** `{info.name}`")


def load(spec: str) -> None:
    """Load `spec` with a live progress log; on failure keep the previous model and show the reason and its fix
    (the loader's message names both) in plain view, below the collapsed log."""
    with st.status(f"Loading {spec} …", expanded=True) as box:
        try:
            loaded = state.models().get(spec, progress=box.write)
        except Exception as err:  # noqa: BLE001 - any failure is shown; the app stays usable
            box.update(label=f"Could not load {spec} (log)", state="error", expanded=False)
            failure = err
        else:
            failure = None
            box.update(label=f"Loaded {spec}", state="complete", expanded=False)
    if failure is not None:
        st.error(f"Could not load model {spec!r}: {failure}", icon=":material/error:")
        st.caption(f"The model in use stays {session.model_spec()}.")
        return
    session.set_model_spec(spec)
    show_info(loaded)


st.title("Model")
st.write("The model to unlearn from. Everything runs on this machine; the demo model loads in about a second.")
source = st.radio("Source", list(SOURCES), key="model_source", horizontal=True)
spec = SOURCES[source]
if spec is None:
    placeholder = (
        "/path/to/model-folder or model.gguf" if source.startswith("Local") else "HuggingFaceTB/SmolLM2-135M-Instruct"
    )
    spec = st.text_input(
        "Path" if source.startswith("Local") else "Hub id", key="model_path", placeholder=placeholder
    ).strip()
if st.button("Load model", type="primary", key="load_model"):
    if not spec:
        st.error("Type a folder, a .gguf file or a hub id first.")
    else:
        load(spec)
else:
    current = state.models().cached(session.model_spec())
    if current is not None:
        st.success(f"Current model: {session.model_spec()}")
        show_info(current)
    else:
        st.info(f"Current model: {session.model_spec()} (loads when first needed, or press Load model).")
