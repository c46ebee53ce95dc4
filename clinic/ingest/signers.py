"""Hub certificate chains that verified, remembered by their exact ``x5c`` strings.

:func:`edge.uplink.envelope.open_envelope` (joserfc) decrypts each envelope and checks its
ES256 signature against ``x5c[0]`` on every message; what is remembered here is only the
chain check of :func:`~edge.uplink.envelope.verify_signer` (x5c -> the hub CA, CN), and only
while every certificate involved is valid: never longer than a fresh check would trust it.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass

from cryptography import x509

from edge.uplink.envelope import Opened, verify_signer

#: distinct x5c chains remembered; hubs reuse one chain for months, so this is plenty, and the
#: bound keeps a flood of distinct certificates from growing memory
CACHE_ENTRIES = 256


@dataclass(frozen=True)
class _Trusted:
    cn: str
    not_before: dt.datetime
    not_after: dt.datetime


class SignerCache:
    """:func:`edge.uplink.envelope.verify_signer` remembered per exact x5c: a chain that
    verified is trusted again while ``now`` lies inside every involved certificate's validity
    (the x5c certificates and the trust anchors: never longer than a fresh check would)."""

    def __init__(self, anchors: Sequence[x509.Certificate]) -> None:
        self._anchors = list(anchors)
        self._trusted: dict[tuple[str, ...], _Trusted] = {}

    def hub_of(self, opened: Opened, now: dt.datetime) -> str:
        """The signer's CN; EnvelopeError ``bad_signature`` as verify_signer raises it."""
        x5c = tuple(opened.jws_header["x5c"])
        t = self._trusted.get(x5c)
        if t is not None and t.not_before <= now <= t.not_after:
            return t.cn
        cn = verify_signer(opened, self._anchors, now)
        every = [opened.leaf, *opened.chain, *self._anchors]
        if len(self._trusted) >= CACHE_ENTRIES:
            self._trusted.clear()
        self._trusted[x5c] = _Trusted(cn, max(c.not_valid_before_utc for c in every),
                                      min(c.not_valid_after_utc for c in every))
        return cn
