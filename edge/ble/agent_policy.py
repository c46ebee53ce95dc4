"""The pairing agent's policy (pure, no I/O): which request for which device gets which answer.

:class:`PairingPolicy` (``edge pair``) answers only for the device being paired — the given
passkey, a confirmed code, or "ask the person at the terminal" — and rejects everything else;
:data:`REJECT_ALL` (``edge run``) rejects every request, so a stranger's device cannot bond with
the hub. :class:`AgentLog` records what was asked and how it was answered (never a passkey);
:class:`AuditThrottle` decides which rejections get an audit entry. The D-Bus shell that applies
them is :mod:`edge.ble.agent`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Protocol

from edge.ble.profiles import normalize_address

PASSKEY_MAX = 999_999


class Method(StrEnum):
    """The ``Agent1`` requests BlueZ makes (``Cancel`` and ``Release`` are not requests)."""

    REQUEST_PASSKEY = "RequestPasskey"
    REQUEST_CONFIRMATION = "RequestConfirmation"
    REQUEST_AUTHORIZATION = "RequestAuthorization"
    AUTHORIZE_SERVICE = "AuthorizeService"
    REQUEST_PIN_CODE = "RequestPinCode"
    DISPLAY_PASSKEY = "DisplayPasskey"
    DISPLAY_PIN_CODE = "DisplayPinCode"


def address_from_path(path: str) -> str | None:
    """The device address in a BlueZ object path (``…/dev_AA_BB_CC_DD_EE_FF``), if any."""
    last = path.rsplit("/", 1)[-1]
    if not last.startswith("dev_"):
        return None
    try:
        return normalize_address(last[4:].replace("_", ":"))
    except ValueError:
        return None


@dataclass(frozen=True)
class AgentRequest:
    """One request: the method, the device's object path, and the code it carries (the
    numeric-comparison code, or the passkey or PIN to display)."""

    method: Method
    device_path: str
    code: str | None = None

    @property
    def address(self) -> str | None:
        return address_from_path(self.device_path)


class Verdict(StrEnum):
    ANSWER = "answer"  # reply with ``Decision.passkey`` (RequestPasskey) or "yes"
    ASK_PASSKEY = "ask_passkey"  # ask the person at the terminal for the passkey
    ASK_CONFIRM = "ask_confirm"  # show the code and ask yes or no
    SHOW = "show"  # DisplayPasskey / DisplayPinCode: show the code, nothing to answer
    REJECT = "reject"


class Why(StrEnum):
    """Why a request was rejected (stable words for audit and errors)."""

    OTHER_DEVICE = "other_device"
    UNSOLICITED = "unsolicited"
    NO_PASSKEY = "no_passkey"
    NO_CONFIRM = "no_confirm"
    UNSUPPORTED = "unsupported"


@dataclass(frozen=True)
class Decision:
    verdict: Verdict
    passkey: int | None = None
    why: Why | None = None


def reject(why: Why) -> Decision:
    return Decision(Verdict.REJECT, why=why)


class Policy(Protocol):
    def decide(self, request: AgentRequest) -> Decision: ...


@dataclass(frozen=True)
class PairingPolicy:
    """``edge pair``: answers only for ``address``, with ``passkey`` when given, accepting a
    numeric comparison with ``confirm``, else asking when ``can_prompt`` (a terminal)."""

    address: str
    passkey: int | None = None
    confirm: bool = False
    can_prompt: bool = False

    def decide(self, request: AgentRequest) -> Decision:
        if request.address is None or request.address != normalize_address(self.address):
            return reject(Why.OTHER_DEVICE)
        method = request.method
        if method is Method.REQUEST_PASSKEY:
            if self.passkey is not None:
                return Decision(Verdict.ANSWER, passkey=self.passkey)
            return Decision(Verdict.ASK_PASSKEY) if self.can_prompt else reject(Why.NO_PASSKEY)
        if method is Method.REQUEST_CONFIRMATION:
            if self.confirm:
                return Decision(Verdict.ANSWER)
            return Decision(Verdict.ASK_CONFIRM) if self.can_prompt else reject(Why.NO_CONFIRM)
        if method in (Method.DISPLAY_PASSKEY, Method.DISPLAY_PIN_CODE):
            return Decision(Verdict.SHOW)
        if method in (Method.REQUEST_AUTHORIZATION, Method.AUTHORIZE_SERVICE):
            return Decision(Verdict.ANSWER)  # the device we are bonding with, right now
        return reject(Why.UNSUPPORTED)  # legacy BR/EDR PIN codes: not an LE medical device


class RejectAll:
    """``edge run``: nothing is paired while the daemon runs; every request is unsolicited."""

    def decide(self, request: AgentRequest) -> Decision:
        return reject(Why.UNSOLICITED)


REJECT_ALL = RejectAll()


class Outcome(StrEnum):
    ANSWERED = "answered"
    REJECTED = "rejected"  # the policy said no (``Handled.why``)
    DECLINED = "declined"  # the person said no to the code
    ABORTED = "aborted"  # the person gave no usable answer (end of input, bad input)
    WITHDRAWN = "withdrawn"  # BlueZ cancelled the request while it was being asked


@dataclass(frozen=True)
class Handled:
    request: AgentRequest
    outcome: Outcome
    why: Why | None = None


@dataclass
class AgentLog:
    """What the agent was asked and how it answered (no passkeys kept)."""

    handled: list[Handled] = field(default_factory=list)
    #: ``Agent1.Cancel()`` calls from BlueZ
    cancels: int = 0

    def last_for(self, address: str) -> Handled | None:
        """The last request about ``address`` (None: BlueZ asked nothing about it)."""
        for h in reversed(self.handled):
            if h.request.address == address:
                return h
        return None


@dataclass
class AuditThrottle:
    """Which rejected requests get an audit entry: the first from each device per
    ``repeat_s``, and at most ``limit`` entries per ``repeat_s`` in all (a storm of spoofed
    addresses cannot flood the audit chain). Pure: the caller passes a monotonic ``now``."""

    repeat_s: float = 600.0
    limit: int = 20
    _last: dict[str, float] = field(default_factory=dict)
    _window: tuple[float, int] | None = None

    def allow(self, device: str, now: float) -> bool:
        last = self._last.get(device)
        if last is not None and now - last < self.repeat_s:
            return False
        start, used = self._window or (now, 0)
        if now - start >= self.repeat_s:
            start, used = now, 0
        if used >= self.limit:
            return False
        self._window = (start, used + 1)
        self._last = {d: t for d, t in self._last.items() if now - t < self.repeat_s}
        self._last[device] = now
        return True
