"""Rollout buckets, computed exactly as the web app's `simpleHash` does.

The plan buckets with TypeScript:

    hash = (hash << 5) - hash + str.charCodeAt(i); hash = hash & hash;
    return Math.abs(hash);

and `simpleHash(eventId + userId) % 100`. Both sides must put every id in the
same bucket, so this reproduces JavaScript's semantics: UTF-16 code units,
`<<` and `&` on 32-bit signed integers, and `Math.abs` on a double, which
turns -2**31 into 2**31 rather than overflowing.
"""

from __future__ import annotations

_MASK = 0xFFFFFFFF


def _to_int32(value: int) -> int:
    value &= _MASK
    return value - (1 << 32) if value & 0x80000000 else value


def simple_hash(text: str) -> int:
    """The plan's `simpleHash(text)`: a non-negative integer up to 2**31."""
    # "surrogatepass": a Python str may hold lone surrogates (JSON "\ud83d"),
    # which JavaScript strings carry as plain code units; "strict" would raise.
    data = text.encode("utf-16-be", "surrogatepass")
    h = 0
    for i in range(0, len(data), 2):
        unit = (data[i] << 8) | data[i + 1]
        h = _to_int32(_to_int32(h << 5) - h + unit)
    return abs(h)


def bucket(event_id: str, user_id: str) -> int:
    """The pair's bucket 0-99: `simpleHash(eventId + userId) % 100`."""
    return simple_hash(event_id + user_id) % 100
