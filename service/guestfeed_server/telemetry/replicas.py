"""Read replicas' metrics: each replica's lag and state, and where reads went.

Created on the service's meter only when replicas are configured, so a
replica-less deployment exports no empty series. The router (storage/)
knows nothing of OpenTelemetry: it hands over its status and a callback.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

from opentelemetry.metrics import CallbackOptions, Meter, Observation

# (replica name, state, lag in seconds or None), as ReadRouter.status() gives them.
Status = tuple[str, str, float | None]
STATES = ("up", "lagging", "down")


class ReplicaMetrics:
    """guestfeed.db.replica.lag, guestfeed.db.replica.state and guestfeed.db.replica.reads."""

    def __init__(self, meter: Meter, status: Callable[[], Sequence[Status]]) -> None:
        self._status = status
        meter.create_observable_gauge(
            "guestfeed.db.replica.lag",
            callbacks=[self._lag],
            unit="s",
            description="Upper bound on how far each read replica's data is behind the "
            "primary, from the service's heartbeat (a replica over "
            "GUESTFEED_REPLICA_MAX_LAG_MS gets no reads)",
        )
        meter.create_observable_gauge(
            "guestfeed.db.replica.state",
            callbacks=[self._state],
            unit="1",
            description="1 for each read replica's current state (up, lagging, down), 0 otherwise",
        )
        self._reads = meter.create_counter(
            "guestfeed.db.replica.reads",
            unit="{read}",
            description="Feed page reads by the database that served them (a replica's name, "
            "or primary) and why (replica, no_replica, fence, retry)",
        )

    def read(self, target: str, route: str) -> None:
        """Counts one read served by `target`."""
        self._reads.add(1, {"guestfeed.db.target": target, "guestfeed.db.route": route})

    def _lag(self, options: CallbackOptions) -> Iterable[Observation]:
        for name, _, lag in self._status():
            if lag is not None:
                yield Observation(lag, {"guestfeed.db.replica": name})

    def _state(self, options: CallbackOptions) -> Iterable[Observation]:
        for name, state, _ in self._status():
            for s in STATES:
                yield Observation(
                    1 if s == state else 0, {"guestfeed.db.replica": name, "state": s}
                )
