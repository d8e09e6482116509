"""Opaque, bound, tamper-evident page tokens.

A token carries the keyset cursor `(created_at, message_id)` plus what it was
issued for: the event, the caller and the read model. It is MACed with a key
derived from the page-token secret, so a corrupted or hand-made token is told
apart from a real one with a clear INVALID_ARGUMENT, and a replica that shares
the secret accepts tokens from any other. Several secrets may be configured:
the first signs, all verify, so a secret is rotated by adding the new one in
front, and dropping the old one once its tokens have aged out.
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
from ..domain.model import Cursor, ReadModel

# Version 2 MACs with keyed BLAKE2b, which CPython implements itself; version
# 1 used HMAC-SHA256 through OpenSSL, whose two calls per token cost several
# times more in a server under load (docs/performance.md). Version 1 tokens,
# from a replica not yet upgraded, are still accepted.
_VERSION = 2
_VERSIONS = (1, 2)
# version, read model, event uuid, viewer digest, created_at (µs since epoch), message uuid
_LAYOUT = struct.Struct(">BB16s8sq16s")
_MAC_BYTES = 12
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MODEL_CODES = {ReadModel.V1: 1, ReadModel.V2: 2}
_CODE_MODELS = {v: k for k, v in _MODEL_CODES.items()}


@dataclass(frozen=True, slots=True)
class TokenScope:
    """What a token is bound to."""

    event_id: uuid.UUID
    viewer_id: uuid.UUID
    read_model: ReadModel


@dataclass(frozen=True, slots=True)
class PageToken:
    """An opened token: the model it was issued for, what it is bound to, its cursor."""

    version: int
    read_model: ReadModel
    event: bytes
    viewer: bytes
    cursor: Cursor

    def cursor_for(self, scope: TokenScope, *, any_model: bool = False) -> Cursor:
        """The cursor, if the token was issued for `scope` (for its event and
        caller in any model, with `any_model`: a rollback moved the pair).

        Raises:
            InvalidArgument: bound to another event, caller or read model.
        """
        if (
            self.event != scope.event_id.bytes
            or self.viewer != _viewer_digest(self.version, scope.viewer_id)
            or (self.read_model is not scope.read_model and not any_model)
        ):
            raise InvalidArgument.of(
                FieldViolation(
                    "page_token",
                    "was issued for another event_id, caller or read_model; "
                    "send the same parameters as the first request, or start again without a token",
                    "PAGE_TOKEN_MISMATCH",
                )
            )
        return self.cursor


class PageTokens:
    """Encodes page tokens with the first secret, and checks them with any."""

    def __init__(self, secrets: str | Sequence[str]) -> None:
        if isinstance(secrets, str):
            secrets = (secrets,)
        if not secrets:
            raise ValueError("PageTokens needs at least one secret")
        # Per secret, one derived key per token version.
        self._keys = [
            {
                v: hashlib.sha256(
                    f"guestfeed page token v{v}\x00".encode() + secret.encode()
                ).digest()
                for v in _VERSIONS
            }
            for secret in secrets
        ]

    def encode(self, scope: TokenScope, cursor: Cursor) -> str:
        """Returns the opaque token that resumes strictly after `cursor`."""
        micros = (cursor.created_at - _EPOCH) // timedelta(microseconds=1)
        body = _LAYOUT.pack(
            _VERSION,
            _MODEL_CODES[scope.read_model],
            scope.event_id.bytes,
            _viewer_digest(_VERSION, scope.viewer_id),
            micros,
            cursor.message_id.bytes,
        )
        mac = self._mac(self._keys[0], _VERSION, body)
        return base64.urlsafe_b64encode(body + mac).rstrip(b"=").decode()

    def open(self, token: str) -> PageToken:
        """Checks the token's MAC and reads it, once per request.

        Raises:
            InvalidArgument: the token is malformed or forged.
        """
        version, model, event, viewer, micros, message = self._verified(token)
        return PageToken(
            version=version,
            read_model=_CODE_MODELS[model],
            event=event,
            viewer=viewer,
            cursor=Cursor(_EPOCH + timedelta(microseconds=micros), uuid.UUID(bytes=message)),
        )

    def _verified(self, token: str) -> tuple[int, int, bytes, bytes, int, bytes]:
        try:
            raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        except (ValueError, TypeError):
            raw = b""
        body, mac = raw[:-_MAC_BYTES], raw[-_MAC_BYTES:]
        version = body[0] if body else 0
        ok = (
            len(body) == _LAYOUT.size
            and version in _VERSIONS
            and any(hmac.compare_digest(mac, self._mac(k, version, body)) for k in self._keys)
        )
        fields = _LAYOUT.unpack(body) if ok else None
        if fields is None or fields[1] not in _CODE_MODELS:
            raise InvalidArgument.of(
                FieldViolation(
                    "page_token",
                    "is not a token this service issued; pass next_page_token from a "
                    "previous response unchanged, or leave it empty for the first page",
                    "PAGE_TOKEN_MALFORMED",
                )
            )
        return fields

    @staticmethod
    def _mac(keys: dict[int, bytes], version: int, body: bytes) -> bytes:
        key = keys[version]
        if version == 1:
            return hmac.digest(key, body, "sha256")[:_MAC_BYTES]
        return hashlib.blake2b(body, key=key, digest_size=_MAC_BYTES).digest()


def _viewer_digest(version: int, viewer_id: uuid.UUID) -> bytes:
    # A digest, not the id: the token need not spell out who holds it.
    if version == 1:
        return hashlib.sha256(viewer_id.bytes).digest()[:8]
    return hashlib.blake2b(viewer_id.bytes, digest_size=8, person=b"guestfeed viewer").digest()
