"""An edge's secret as the cloud keeps it: ``scrypt(secret, salt)``, and what a secret may be.

The check of a presented secret, :func:`~winstar_core.services.cloud.check_secret`, is in
``cloud.py``, where the transport takes it from.
"""

from __future__ import annotations

import hashlib
import re

SCRYPT = {"n": 2**14, "r": 8, "p": 1}

#: what a secret may be: the ones we issue are ``secrets.token_urlsafe(24)`` (32 characters).
#: Anything else is refused before it can count: scrypt keys its HMAC with the secret, and HMAC
#: pads a key with zero bytes (and hashes one longer than its block), so "SECRET" + "\x00" and
#: "SECRET" would otherwise open the same door
MAX_SECRET = 128
SECRET_PATTERN = re.compile(rf"[A-Za-z0-9_-]{{1,{MAX_SECRET}}}")


def hash_secret(secret: str, salt: bytes) -> bytes:
    """``scrypt(secret, salt)``: what the cloud stores of an edge's secret."""
    return hashlib.scrypt(secret.encode(), salt=salt, dklen=64, **SCRYPT)


def well_formed_secret(secret: str) -> bool:
    """Whether ``secret`` could be one we issued (length first: a hello may carry megabytes)."""
    return (
        isinstance(secret, str) and len(secret) <= MAX_SECRET and SECRET_PATTERN.fullmatch(secret) is not None
    )
