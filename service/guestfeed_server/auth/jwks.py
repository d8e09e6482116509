"""The project's signing keys, from its JWKS URL, kept fresh in the background.

Supabase publishes its asymmetric public keys at
`https://<ref>.supabase.co/auth/v1/.well-known/jwks.json`. A standby key
appears there before it signs anything and a revoked key disappears, so the
set is re-read on the schedule its `Cache-Control: max-age` gives (clamped
to a floor and a ceiling), and sooner, at most once per
`unknown_kid_interval_s`, when a token names a key we lack: a flood of
forged `kid`s costs the endpoint one request per interval, not one per token.

The request path never waits on HTTP: it reads the last good set. When the
endpoint fails, that set keeps working; `healthy` turns False (health shows
it as its own service) and the failure is logged.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any

import jwt

from ..telemetry.background import start_background, stop_background
from .keys import VerificationKey

log = logging.getLogger(__name__)

# What Supabase signs with (ES256 recommended, RS256 allowed), and EdDSA,
# which PyJWT verifies with the same `cryptography` backend.
ALGORITHMS = ("ES256", "RS256", "EdDSA")
_INFERRED = {("EC", "P-256"): "ES256", ("RSA", None): "RS256", ("OKP", "Ed25519"): "EdDSA"}
_MAX_BODY = 1 << 20
_MIN_RSA_BITS = 2048


class JwksError(Exception):
    """The JWKS could not be fetched or read; the message says why."""


def refresh_interval(
    cache_control: str | None, *, default_s: float, floor_s: float, ceiling_s: float
) -> float:
    """Seconds until the next fetch, from the response's Cache-Control."""
    max_age: float | None = None
    for directive in (cache_control or "").lower().split(","):
        name, _, value = directive.strip().partition("=")
        if name in ("no-cache", "no-store"):
            max_age = 0.0
        elif name == "max-age":
            with contextlib.suppress(ValueError):
                max_age = float(value.strip().strip('"'))
    chosen = default_s if max_age is None else max_age
    return min(max(chosen, floor_s), ceiling_s)


def parse_jwks(body: bytes) -> dict[str, VerificationKey]:
    """The usable signing keys of a JWKS document, by `kid`.

    Keys this service cannot or must not use are skipped with a warning (one
    odd key does not take the others down): keys without a `kid`, keys for
    encryption, symmetric keys, private keys, unknown algorithms, RSA keys
    under 2048 bits.

    Raises:
        JwksError: the document is not a JWKS at all.
    """
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise JwksError(f"the response is not JSON ({exc})") from None
    entries = data.get("keys") if isinstance(data, dict) else None
    if not isinstance(entries, list):
        raise JwksError("the response has no 'keys' list")
    keys: dict[str, VerificationKey] = {}
    for entry in entries:
        kid, key, why = _load_key(entry)
        if key is None:
            log.warning("JWKS key %r skipped: %s", kid, why)
            continue
        keys[kid] = key
    return keys


def _load_key(entry: Any) -> tuple[str, VerificationKey | None, str]:
    if not isinstance(entry, dict):
        return "", None, "not a JSON object"
    kid = entry.get("kid")
    if not isinstance(kid, str) or not kid:
        return "", None, "it has no 'kid'"
    if entry.get("use", "sig") != "sig":
        return kid, None, f"its use is {entry.get('use')!r}, not 'sig'"
    kty = entry.get("kty")
    if kty == "oct" or "d" in entry:
        # A JWKS publishes public keys only; anything secret here is a mistake
        # upstream, and trusting it would let anyone who read it sign tokens.
        return kid, None, "it is a secret or private key"
    crv = entry.get("crv") if kty != "RSA" else None
    alg = entry.get("alg") or _INFERRED.get((str(kty), crv if isinstance(crv, str) else None))
    if alg not in ALGORITHMS:
        return kid, None, f"algorithm {alg!r} is not one of {', '.join(ALGORITHMS)}"
    try:
        jwk = jwt.PyJWK(entry, algorithm=alg)
    except (jwt.PyJWKError, jwt.InvalidKeyError, ValueError, TypeError) as exc:
        return kid, None, f"it does not load as {alg} ({exc})"
    if alg == "RS256" and getattr(jwk.key, "key_size", _MIN_RSA_BITS) < _MIN_RSA_BITS:
        return kid, None, f"RSA keys must have at least {_MIN_RSA_BITS} bits"
    return kid, VerificationKey(jwk.key, (alg,)), ""


def _fetch(url: str, timeout_s: float) -> tuple[bytes, str | None]:
    request = urllib.request.Request(
        url, headers={"Accept": "application/json", "User-Agent": "guestfeed"}
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            body = response.read(_MAX_BODY + 1)
            cache_control = response.headers.get("Cache-Control")
    except urllib.error.HTTPError as exc:
        raise JwksError(f"HTTP {exc.code} {exc.reason}") from None
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        raise JwksError(f"{type(exc).__name__}: {reason}") from None
    if len(body) > _MAX_BODY:
        raise JwksError(f"the response is larger than {_MAX_BODY} bytes")
    return body, cache_control


class JwksKeys:
    """The last good key set of one JWKS URL, refreshed in the background."""

    def __init__(
        self,
        url: str,
        *,
        timeout_s: float = 5.0,
        default_refresh_s: float = 300.0,
        min_refresh_s: float = 30.0,
        max_refresh_s: float = 3600.0,
        unknown_kid_interval_s: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.url = url
        self._timeout = timeout_s
        self._default = default_refresh_s
        self._floor = min_refresh_s
        self._ceiling = max_refresh_s
        self._unknown_interval = unknown_kid_interval_s
        self._clock = clock
        self._keys: dict[str, VerificationKey] = {}
        # Bumped whenever the key set changes: verified-token caches drop
        # their entries then, so a revoked key stops working at once.
        self.version = 0
        self.healthy = False
        self.last_error = ""
        self._last_forced = float("-inf")
        self._next_s = default_refresh_s
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def get(self, kid: str) -> VerificationKey | None:
        """The key published under `kid`, if the last good set has it."""
        return self._keys.get(kid)

    @property
    def kids(self) -> tuple[str, ...]:
        """The key ids of the current set."""
        return tuple(self._keys)

    def note_unknown_kid(self, kid: str) -> None:
        """Asks for an early refetch, at most once per `unknown_kid_interval_s`."""
        now = self._clock()
        if now - self._last_forced < self._unknown_interval:
            return
        self._last_forced = now
        log.info("token names an unknown signing key; refetching the JWKS early")
        self._wake.set()

    async def refresh(self) -> float:
        """Fetches the set once; returns the seconds until the next fetch.

        Raises:
            JwksError: the fetch failed; the previous set stays in use.
        """
        try:
            body, cache_control = await asyncio.to_thread(_fetch, self.url, self._timeout)
            keys = parse_jwks(body)
        except JwksError as exc:
            self.last_error = str(exc)
            if self.healthy or self.version == 0:
                log.warning(
                    "JWKS fetch from %s failed (%s); %s",
                    self.url,
                    exc,
                    "keeping the last good keys" if self._keys else "no keys yet",
                )
            self.healthy = False
            raise
        if not self.healthy and self.version > 0:
            log.info("JWKS fetch from %s works again", self.url)
        self.healthy = True
        self.last_error = ""
        if keys.keys() != self._keys.keys() or self.version == 0:
            log.info("JWKS keys now: %s", ", ".join(sorted(keys)) or "(none)")
            self._keys = keys
            self.version += 1
        self._next_s = refresh_interval(
            cache_control, default_s=self._default, floor_s=self._floor, ceiling_s=self._ceiling
        )
        return self._next_s

    async def start(self, *, startup_timeout_s: float) -> None:
        """Fetches the first set (retrying for up to `startup_timeout_s`), then
        keeps it fresh in the background.

        Raises:
            JwksError: no key set could be fetched in time.
        """
        deadline = self._clock() + startup_timeout_s
        while True:
            try:
                await self.refresh()
                break
            except JwksError:
                left = deadline - self._clock()
                if left <= 0:
                    raise
                await asyncio.sleep(min(1.0, left))
        self._task = start_background(self._run(), "guestfeed-jwks")

    async def stop(self) -> None:
        """Stops refreshing."""
        await stop_background(self._task)

    async def _run(self) -> None:
        delay = self._next_s
        backoff = 1.0
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await self._wake.wait()
            self._wake.clear()
            try:
                delay = await self.refresh()
                backoff = 1.0
            except JwksError:
                # Retry sooner than the regular schedule, but never hammer.
                delay = min(backoff, self._next_s)
                backoff = min(backoff * 2, 60.0)
