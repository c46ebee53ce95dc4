"""Keys shared by the envelope tests: a hub CA, a hub certificate it issued, a clinic key."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from edge.uplink.pki import Issued, issue, make_ca


@pytest.fixture(scope="module")
def ca() -> Issued:
    return make_ca()


@pytest.fixture(scope="module")
def hub(ca: Issued) -> Issued:
    return issue(ca, "hub-1")


@pytest.fixture(scope="module")
def clinic() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())
