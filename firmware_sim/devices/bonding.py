"""The device's side of pairing: the challenge it starts a pairing with, the check of what the
host answered, and the fault plan's refusals."""

from __future__ import annotations

import random

from firmware_sim.model.contract import PeripheralError, SimErrorCode
from firmware_sim.model.pairing import (
    PASSKEY_MAX,
    PairingChallenge,
    PairingMethod,
    PairingSpec,
)

#: pairing_refused fault value -> the error the pairing ends with
_REFUSALS = {
    "failed": (SimErrorCode.AUTHENTICATION_FAILED, "Authentication Failed"),
    "rejected": (SimErrorCode.AUTHENTICATION_REJECTED, "Authentication Rejected"),
    "canceled": (SimErrorCode.AUTHENTICATION_CANCELED, "Authentication Canceled"),
}


def seeded_passkey(rng: random.Random) -> int:
    """A passkey as printed on a device, drawn from its seed."""
    return rng.randint(0, PASSKEY_MAX)


def challenge(spec: PairingSpec, rng: random.Random, refused: str | None) -> PairingChallenge:
    """The challenge of one pairing attempt: numeric comparison shows a fresh code each time;
    a passkey device its fixed passkey. ``refused`` is the fault plan's ``pairing_refused``."""
    if spec.method is PairingMethod.NUMERIC_COMPARISON:
        code: int | None = rng.randint(0, PASSKEY_MAX)
    else:
        code = spec.passkey
    return PairingChallenge(spec.method, code, device_cancels=refused == "canceled")


def check_refusal(refused: str | None) -> None:
    """Raise the error a ``pairing_refused`` fault makes the pairing end with."""
    if refused in _REFUSALS:
        code, text = _REFUSALS[refused]
        raise PeripheralError(code, text)


def check_answer(
    spec: PairingSpec, shown: PairingChallenge | None, passkey: int | None, confirmed: bool
) -> None:
    """Raise AuthenticationFailed unless the host's answer completes the pairing: nothing for
    just works; the passkey for a passkey device; for numeric comparison the confirmation of
    the code shown (or, from a keyboard-only host, the code typed)."""
    if spec.method is PairingMethod.JUST_WORKS:
        return
    if spec.method is PairingMethod.PASSKEY:
        ok = passkey is not None and passkey == spec.passkey
    else:
        code = shown.code if shown is not None else None
        ok = code is not None and (confirmed or passkey == code)
    if not ok:
        raise PeripheralError(SimErrorCode.AUTHENTICATION_FAILED, "Authentication Failed")
