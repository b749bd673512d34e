"""What a peer's payload may hold: the decoder refuses what the store cannot keep, with one
clear reason, and nothing else."""

from __future__ import annotations

import json
import re

import pytest

from winstar_core.entity_types import _unstorable
from winstar_core.errors import InvalidData


@pytest.mark.parametrize(
    "payload, refusal",
    [
        (b'{"label": "x"}', None),
        (b'{"label": "\\u00e9 caf\\u00e9"}', None),  # escapes that are fine
        (b'{"label": "NaN and Infinity are words"}', None),
        (b'{"label": 1.5e300, "n": [0.1, -2.5]}', None),
        (b'{"label": NaN}', "a number JSON cannot write (nan)"),
        (b'{"label": -Infinity}', "a number JSON cannot write (-inf)"),
        (b'{"label": 1e999}', "a number JSON cannot write (inf)"),  # no Infinity token at all
        (b'{"n": -' + b"9" * 400 + b".5}", "a number JSON cannot write (-inf)"),
        (b'{"label": "a\\u0000b"}', "the NUL character"),
        (b'{"label": "\\udc00"}', "a lone surrogate"),
        (b'{"a": ' + b"[" * 70 + b"]" * 70 + b"}", "nested more than 64 levels"),
        (b'{"a": ' + b"[" * 70 + b'"\\u0000"' + b"]" * 70 + b"}", "nested more than 64 levels"),
    ],
)
def test_a_payload_is_refused_for_what_the_store_cannot_hold_and_only_that(platform, payload, refusal):
    """The decoder's shortcut (finite numbers and no \\u escape: only the depth to check) refuses
    exactly what the walk over every value refuses, with the same words."""
    asset = platform.types.get("asset")
    if refusal is None:
        data = asset.decode(payload)
        assert data == json.loads(payload) and _unstorable(data) is None
    else:
        with pytest.raises(InvalidData, match=re.escape(refusal)):
            asset.decode(payload)
