"""What a config field means for a run's identity, stated beside the field (the stage configs' dataclasses).

A run id hashes everything that changes a number (nirvana.evaluation.protocol.run_identity). Two kinds of field
do not count in full:
- `unhashed`: how a result is computed, never which (memory schedules, whether a folder's code may run);
- `later`: an option that joined the configs after results were published. It is hashed only when it differs
  from `omit_if` (its default unless said otherwise), so adding it left every published run id valid.
"""

from __future__ import annotations

import dataclasses
from typing import Any

_OMIT = "omit_if"
_UNHASHED = "unhashed"


def later(default: Any, omit_if: Any = dataclasses.MISSING, **kwargs) -> Any:
    """A field added after results were published: left out of run ids while it equals `omit_if` (default: its
    default)."""
    neutral = default if omit_if is dataclasses.MISSING else omit_if
    return dataclasses.field(default=default, metadata={_OMIT: neutral}, **kwargs)


def unhashed(default: Any, **kwargs) -> Any:
    """A field that never changes a number: never part of a run id."""
    return dataclasses.field(default=default, metadata={_UNHASHED: True}, **kwargs)


def identity(value: Any) -> Any:
    """`value` as plain JSON-able data for a run id: dataclasses become dicts of their hashed fields (recursively);
    lists, tuples and dicts are walked; everything else is returned as it is."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        out = {}
        for f in dataclasses.fields(value):
            v = getattr(value, f.name)
            if f.metadata.get(_UNHASHED) or (_OMIT in f.metadata and v == f.metadata[_OMIT]):
                continue
            out[f.name] = identity(v)
        return out
    if isinstance(value, list | tuple):
        return [identity(v) for v in value]
    if isinstance(value, dict):
        return {k: identity(v) for k, v in value.items()}
    return value


def at_least(key: str, value, low) -> None:
    """A config value (None allowed: "unset") must be ≥ `low`; the error names the key."""
    if value is not None and value < low:
        raise ValueError(f"{key} must be ≥ {low}, got {value!r}")


def one_of(key: str, value, choices) -> None:
    """A config value must be one of `choices`; the error names the key and lists them."""
    if value not in choices:
        raise ValueError(f"{key}={value!r}: choose one of {tuple(choices)}")
