"""Whether the Hugging Face hub can be reached, asked once and quickly before a hub look-up.

Without a network, huggingface_hub retries each request five times with backoff: a missing hub id or TOFU
split took ~30-50 s and printed ~22 warning lines before the one error that matters. One short connection
attempt answers the same question in at most PROBE_TIMEOUT_S.
"""

from __future__ import annotations

import socket
import urllib.request
from urllib.parse import urlsplit

PROBE_TIMEOUT_S = 3.0


def hub_reachable() -> bool:
    """False when HF_HUB_OFFLINE is set or the hub's host refuses a TCP connection; True behind a proxy
    (the proxy, not this probe, decides what is reachable)."""
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return False
    url = urlsplit(constants.ENDPOINT)
    if url.scheme in urllib.request.getproxies():
        return True
    try:
        with socket.create_connection(
            (url.hostname, url.port or (80 if url.scheme == "http" else 443)), timeout=PROBE_TIMEOUT_S
        ):
            return True
    except OSError:
        return False
