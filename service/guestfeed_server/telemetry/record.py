"""What one RPC did, collected while it runs and reported once when it ends.

The telemetry interceptor puts a fresh `RpcRecord` in a context variable for
every call; the feed and rollout code fill it in (`note_page`,
`note_decision`). The interceptor then writes the log line, the span
attributes and the metrics from it, so those three always agree.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from contextvars import ContextVar
from dataclasses import dataclass, field

from opentelemetry import trace

from ..domain.model import FeedMessage


@dataclass
class RpcRecord:
    """Feed facts of one RPC (empty for RPCs that serve no feed)."""

    read_model: str = ""
    # "explicit" (the caller chose), "page_token" (resumed), or a rollout reason.
    model_choice: str = ""
    event_id: str = ""
    page_size: int = 0
    pages: int = 0
    messages: int = 0
    # (message type, source) -> messages served.
    by_kind: Counter[tuple[str, str]] = field(default_factory=Counter)
    decisions: list[tuple[str, str]] = field(default_factory=list)
    # The read model the request named ("" when it left the choice to us).
    requested_read_model: str = ""

    @property
    def by_type(self) -> Counter[str]:
        """Messages served by message type."""
        out: Counter[str] = Counter()
        for (mtype, _), n in self.by_kind.items():
            out[mtype] += n
        return out

    @property
    def by_source(self) -> Counter[str]:
        """Messages served by source (delivery- or message-backed)."""
        out: Counter[str] = Counter()
        for (_, source), n in self.by_kind.items():
            out[source] += n
        return out


_current: ContextVar[RpcRecord | None] = ContextVar("guestfeed_rpc_record", default=None)


def begin() -> RpcRecord:
    """Starts a record for the RPC running in this context."""
    record = RpcRecord()
    _current.set(record)
    return record


def source_of(delivery_backed: bool) -> str:
    """The plan's "message source breakdown" label."""
    return "delivery" if delivery_backed else "message"


def note_page(
    messages: Sequence[FeedMessage],
    *,
    read_model: str,
    model_choice: str,
    event_id: str,
    page_size: int,
) -> None:
    """Adds a served page to the record and an event on the RPC's span."""
    record = _current.get()
    kinds = Counter((m.message_type.value, source_of(m.is_delivery_backed)) for m in messages)
    if record is not None:
        record.read_model = read_model
        record.model_choice = model_choice
        record.event_id = event_id
        record.page_size = page_size
        record.pages += 1
        record.messages += len(messages)
        record.by_kind.update(kinds)
    span = trace.get_current_span()
    if span.is_recording():
        types: Counter[str] = Counter()
        sources: Counter[str] = Counter()
        for (mtype, source), n in kinds.items():
            types[mtype] += n
            sources[source] += n
        attrs: dict[str, str | int] = {"guestfeed.page.messages": len(messages)}
        attrs.update({f"guestfeed.page.type.{k}": v for k, v in types.items()})
        attrs.update({f"guestfeed.page.source.{k}": v for k, v in sources.items()})
        span.add_event("guestfeed.page", attrs)


def note_watch(count: int, *, read_model: str, model_choice: str, event_id: str) -> None:
    """Adds a WatchMessages response to the record: cheaper than `note_page` (no
    per-type breakdown, no span event), as a watch sends one per message per
    watcher; guestfeed.watch.delivered counts the messages."""
    record = _current.get()
    if record is not None:
        record.read_model = read_model
        record.model_choice = model_choice
        record.event_id = event_id
        record.pages += 1
        record.messages += count


def note_decision(read_model: str, reason: str) -> None:
    """Records that the rollout was consulted."""
    record = _current.get()
    if record is not None:
        record.decisions.append((read_model, reason))


def note_requested(read_model: str) -> None:
    """Records the read model the request named (served or not)."""
    record = _current.get()
    if record is not None:
        record.requested_read_model = read_model
