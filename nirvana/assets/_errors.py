"""The one error type of the asset build: its message says what failed and what to do about it."""

from __future__ import annotations


class AssetError(RuntimeError):
    """A build step failed; `python -m nirvana.assets` prints the message and exits non-zero."""
