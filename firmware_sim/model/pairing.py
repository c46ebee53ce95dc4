"""Pairing as a device demands it and as the host's agent can answer it (pure, no I/O).

A device requires one of three LE pairing methods (:class:`PairingMethod`):

- ``just_works``: no input or output on the device; nobody is asked anything.
- ``passkey``: the device shows (or has printed on it) a 6-digit passkey that the host types.
- ``numeric_comparison``: the device shows a fresh 6-digit code and both sides confirm it
  (LE Secure Connections).

Which agent method bluetoothd calls follows the two sides' IO capabilities (Core spec, Vol 3
Part H 2.3.5.1), see :func:`association`. With no agent at all, bluetoothd pairs as
``NoInputNoOutput``: only a just-works device can bond then.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class PairingMethod(StrEnum):
    """What the device requires."""

    JUST_WORKS = "just_works"
    PASSKEY = "passkey"
    NUMERIC_COMPARISON = "numeric_comparison"


#: Agent capabilities BlueZ accepts in ``AgentManager1.RegisterAgent`` ("" means KeyboardDisplay).
CAPABILITIES = frozenset(
    {"DisplayOnly", "DisplayYesNo", "KeyboardOnly", "NoInputNoOutput", "KeyboardDisplay"}
)
#: the capability bluetoothd pairs with when no agent is registered
NO_AGENT = "NoInputNoOutput"

PASSKEY_MAX = 999_999


class Association(StrEnum):
    """What the host's side of a pairing looks like; values are Agent1 method names."""

    #: Just Works: no agent call for a pairing the host starts
    NONE = "none"
    #: the host types the code the device shows: ``RequestPasskey(device) -> u``
    ENTER_PASSKEY = "RequestPasskey"
    #: both confirm the code: ``RequestConfirmation(device, u passkey)``
    CONFIRM = "RequestConfirmation"
    #: the device needs a protected (MITM) pairing the host's IO cannot give: it fails
    IMPOSSIBLE = "impossible"


_KEYBOARD = frozenset({"KeyboardOnly", "KeyboardDisplay"})
_YES_NO = frozenset({"DisplayYesNo", "KeyboardDisplay"})


def association(method: PairingMethod, capability: str | None) -> Association:
    """How a pairing with a device requiring ``method`` goes for a host agent with
    ``capability`` (None: no agent registered)."""
    cap = capability or NO_AGENT
    if method is PairingMethod.JUST_WORKS:
        return Association.NONE
    if method is PairingMethod.PASSKEY:
        # the device displays (DisplayOnly): the host must be able to type
        return Association.ENTER_PASSKEY if cap in _KEYBOARD else Association.IMPOSSIBLE
    # numeric comparison (device DisplayYesNo): a keyboard-only host types the code instead
    if cap in _YES_NO:
        return Association.CONFIRM
    if cap == "KeyboardOnly":
        return Association.ENTER_PASSKEY
    return Association.IMPOSSIBLE


@dataclass(frozen=True)
class PairingSpec:
    """What a device requires: the method and, for ``passkey``, its fixed passkey."""

    method: PairingMethod = PairingMethod.JUST_WORKS
    passkey: int | None = None

    def __post_init__(self) -> None:
        if self.passkey is not None and not 0 <= self.passkey <= PASSKEY_MAX:
            raise ValueError(f"passkey must be 0..{PASSKEY_MAX}, got {self.passkey}")
        if self.method is PairingMethod.PASSKEY and self.passkey is None:
            raise ValueError("a passkey device needs its passkey")


@dataclass(frozen=True)
class PairingChallenge:
    """One pairing attempt as the device starts it: the method, the code it shows (passkey or
    numeric comparison), and whether the device will cancel while the host is being asked."""

    method: PairingMethod
    code: int | None = None
    device_cancels: bool = False


def parse_pairing(
    method: object, passkey: object, *, where: str
) -> tuple[PairingMethod, int | None]:
    """The method and passkey from scenario / spec values (a digit string is fine for the
    passkey); raises ValueError naming ``where``. A passkey device without a passkey gets one
    drawn from its seed by the fleet."""
    try:
        kind = PairingMethod(str(method))
    except ValueError:
        choices = ", ".join(m.value for m in PairingMethod)
        raise ValueError(f"{where}.pairing: expected one of {choices}, got {method!r}") from None
    code: int | None
    if passkey is None:
        code = None
    elif isinstance(passkey, str) and passkey.isdigit() and len(passkey) <= 6:
        code = int(passkey)
    elif isinstance(passkey, int) and not isinstance(passkey, bool):
        code = passkey
    else:
        raise ValueError(f"{where}.passkey: expected up to 6 digits, got {passkey!r}")
    if code is not None and not 0 <= code <= PASSKEY_MAX:
        raise ValueError(f"{where}.passkey: expected 0..{PASSKEY_MAX}, got {code}")
    if code is not None and kind is not PairingMethod.PASSKEY:
        raise ValueError(f'{where}.passkey: only with pairing = "passkey"')
    return kind, code
