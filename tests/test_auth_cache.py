"""The verified-token cache never accepts what verification would refuse."""

from __future__ import annotations

import time
import uuid

import jwt
import pytest

from guestfeed_server.auth import Authenticator, HS256Secret, Role, mint
from guestfeed_server.domain.errors import Unauthenticated

from .conftest import SECRET


def _meta(token: str) -> list[tuple[str, str]]:
    return [("authorization", f"Bearer {token}")]


class TestTokenCache:
    def test_cached_token_is_refused_once_it_expires(self) -> None:
        """A token accepted (and cached) before its exp is refused after exp + leeway."""
        auth = Authenticator(HS256Secret(SECRET), leeway_s=0)
        user = uuid.uuid4()
        token = mint(SECRET, user, ttl_s=1)
        assert auth.authenticate(_meta(token)).user_id == user
        time.sleep(2.1)
        with pytest.raises(Unauthenticated) as info:
            auth.authenticate(_meta(token))
        assert info.value.reason == "TOKEN_EXPIRED"

    def test_a_changed_signature_is_not_served_from_the_cache(self) -> None:
        """Flipping one character of a cached token's signature is verified afresh and refused."""
        auth = Authenticator(HS256Secret(SECRET))
        token = mint(SECRET, uuid.uuid4())
        auth.authenticate(_meta(token))
        head, payload, sig = token.split(".")
        forged = f"{head}.{payload}.{('A' if sig[0] != 'A' else 'B') + sig[1:]}"
        with pytest.raises(Unauthenticated):
            auth.authenticate(_meta(forged))

    def test_cache_keeps_each_tokens_own_principal(self) -> None:
        """Two cached tokens answer with their own subject and role."""
        auth = Authenticator(HS256Secret(SECRET), cache_size=1)
        a, b = uuid.uuid4(), uuid.uuid4()
        ta, tb = mint(SECRET, a), mint(SECRET, b, role=Role.SERVICE_ROLE)
        for _ in range(3):
            pa, pb = auth.authenticate(_meta(ta)), auth.authenticate(_meta(tb))
            assert (pa.user_id, pa.role) == (a, Role.AUTHENTICATED)
            assert (pb.user_id, pb.role) == (b, Role.SERVICE_ROLE)

    def test_token_signed_with_another_secret_is_refused_even_after_a_hit(self) -> None:
        """A cache hit for one token does not vouch for another with the same claims."""
        auth = Authenticator(HS256Secret(SECRET))
        user = uuid.uuid4()
        good = mint(SECRET, user)
        auth.authenticate(_meta(good))
        claims = jwt.decode(good, SECRET, algorithms=["HS256"], audience="authenticated")
        bad = jwt.encode(claims, "another-secret-" + "y" * 40, algorithm="HS256")
        with pytest.raises(Unauthenticated):
            auth.authenticate(_meta(bad))
