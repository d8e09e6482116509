"""Who is calling: bearer tokens verified against the project's keys.

`Authenticator` turns `authorization` metadata into a `Principal`. The keys
come from a `KeyResolver`: the project's JWKS (`JwksKeys`, refreshed in the
background), the legacy HS256 secret, or both (`KeySet`).
"""

from .jwks import JwksError, JwksKeys
from .keys import HS256Secret, KeyResolver, KeySet, VerificationKey
from .principal import Principal, Role
from .verify import AUDIENCE, Authenticator, mint

__all__ = [
    "AUDIENCE",
    "Authenticator",
    "HS256Secret",
    "JwksError",
    "JwksKeys",
    "KeyResolver",
    "KeySet",
    "Principal",
    "Role",
    "VerificationKey",
    "mint",
]
