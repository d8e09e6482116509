"""Watch tokens: a feed position for WatchMessages, opaque, bound and MACed.

A watch token (a WatchMessagesResponse's `resume_token`, a first page's
`watch_token`) carries a horizon: everything keyed below it has been seen.
It is bound like a page token (event, caller, read model) and MACed with
keys derived from the same page-token secrets, but under another label and
in another layout: a page token is never accepted as a watch token, nor the
other way round, and a replica that shares the secrets accepts either kind
from any other.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import struct
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from ..domain.errors import FieldViolation, InvalidArgument
from ..domain.model import ReadModel
from .tokens import TokenScope

_VERSION = 1
# version, read model, event uuid, viewer digest, position (µs since the epoch)
_LAYOUT = struct.Struct(">BB16s8sq")
_MAC_BYTES = 12
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MODEL_CODES = {ReadModel.V1: 1, ReadModel.V2: 2}
_CODE_MODELS = {v: k for k, v in _MODEL_CODES.items()}
FIELD = "resume_token"


@dataclass(frozen=True, slots=True)
class WatchToken:
    """An opened watch token: its model, binding and position."""

    read_model: ReadModel
    event: bytes
    viewer: bytes
    position: datetime

    def position_for(self, scope: TokenScope, *, any_model: bool = False) -> datetime:
        """The position, if the token was issued for `scope` (any model with
        `any_model`: a kill switch moved the watch to V1).

        Raises:
            InvalidArgument: bound to another event, caller or read model.
        """
        if (
            self.event != scope.event_id.bytes
            or self.viewer != _viewer_digest(scope.viewer_id)
            or (self.read_model is not scope.read_model and not any_model)
        ):
            raise InvalidArgument.of(
                FieldViolation(
                    FIELD,
                    "was issued for another event_id, caller or read_model; send the same "
                    "event_id and read_model as the call that issued it, or leave it empty "
                    "to watch from now",
                    "WATCH_TOKEN_MISMATCH",
                )
            )
        return self.position


class WatchTokens:
    """Encodes watch tokens with the first secret, and checks them with any."""

    def __init__(self, secrets: str | Sequence[str]) -> None:
        if isinstance(secrets, str):
            secrets = (secrets,)
        if not secrets:
            raise ValueError("WatchTokens needs at least one secret")
        self._keys = [
            hashlib.sha256(f"guestfeed watch token v{_VERSION}\x00".encode() + s.encode()).digest()
            for s in secrets
        ]

    def encode(self, scope: TokenScope, position: datetime) -> str:
        """The token for "everything keyed at or after `position`"."""
        micros = (position - _EPOCH) // timedelta(microseconds=1)
        body = _LAYOUT.pack(
            _VERSION,
            _MODEL_CODES[scope.read_model],
            scope.event_id.bytes,
            _viewer_digest(scope.viewer_id),
            micros,
        )
        mac = _mac(self._keys[0], body)
        return base64.urlsafe_b64encode(body + mac).rstrip(b"=").decode()

    def open(self, token: str) -> WatchToken:
        """Checks the MAC and reads the token.

        Raises:
            InvalidArgument: malformed, forged, or another kind of token.
        """
        try:
            raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        except (ValueError, TypeError):
            raw = b""
        body, mac = raw[:-_MAC_BYTES], raw[-_MAC_BYTES:]
        ok = (
            len(body) == _LAYOUT.size
            and body[0] == _VERSION
            and any(hmac.compare_digest(mac, _mac(k, body)) for k in self._keys)
        )
        fields = _LAYOUT.unpack(body) if ok else None
        if fields is None or fields[1] not in _CODE_MODELS:
            raise InvalidArgument.of(
                FieldViolation(
                    FIELD,
                    "is not a watch token this service issued; pass the resume_token of a "
                    "WatchMessagesResponse or the watch_token of a first page unchanged, or "
                    "leave it empty to watch from now",
                    "WATCH_TOKEN_MALFORMED",
                )
            )
        _, model, event, viewer, micros = fields
        return WatchToken(
            _CODE_MODELS[model], event, viewer, _EPOCH + timedelta(microseconds=micros)
        )


def _mac(key: bytes, body: bytes) -> bytes:
    return hashlib.blake2b(body, key=key, digest_size=_MAC_BYTES).digest()


def _viewer_digest(viewer_id: uuid.UUID) -> bytes:
    # The page tokens' digest (version 2), so a token never names its holder.
    return hashlib.blake2b(viewer_id.bytes, digest_size=8, person=b"guestfeed viewer").digest()
