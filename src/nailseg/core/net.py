"""A fast check for internet access, so weight downloads fail in seconds, not after long retries."""

from __future__ import annotations

import socket


def online(host: str = "huggingface.co", port: int = 443, timeout: float = 3.0) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False
