"""The pairing agent's pure parts: which request for which device gets which answer, which
rejections are audited, what a failed Pair means for the operator; and the terminal prompter
on a pipe."""

from __future__ import annotations

import asyncio
import dataclasses
import io
import os

import pytest

from edge.ble.agent_policy import (
    REJECT_ALL,
    AgentLog,
    AgentRequest,
    AuditThrottle,
    Decision,
    Handled,
    Method,
    Outcome,
    PairingPolicy,
    Verdict,
    Why,
    address_from_path,
)
from edge.ble.pairing import (
    FAILURES,
    TerminalPrompter,
    failed,
    failure_reason,
    parse_passkey,
)
from edge.errors import PairingRefused
from edge.testing import eventually

pytestmark = pytest.mark.timeout(30)

TARGET = "14:60:D1:FF:01:2B"
OTHER = "AA:BB:CC:DD:EE:FF"
ERR = "org.bluez.Error."


def path(address: str) -> str:
    return "/org/bluez/hci0/dev_" + address.replace(":", "_")


def req(method: Method, address: str = TARGET, code: str | None = None) -> AgentRequest:
    return AgentRequest(method, path(address), code)


def test_the_address_comes_from_the_device_path() -> None:
    assert address_from_path("/org/bluez/hci1/dev_14_60_d1_ff_01_2b") == TARGET
    assert address_from_path("/org/bluez/hci0") is None
    assert address_from_path("/org/bluez/hci0/dev_14_60") is None
    assert req(Method.REQUEST_PASSKEY).address == TARGET


def test_a_given_passkey_answers_the_target_only() -> None:
    policy = PairingPolicy(TARGET.lower(), passkey=123)
    assert policy.decide(req(Method.REQUEST_PASSKEY)) == Decision(Verdict.ANSWER, passkey=123)
    assert policy.decide(req(Method.REQUEST_PASSKEY, OTHER)) == Decision(
        Verdict.REJECT, why=Why.OTHER_DEVICE
    )


@pytest.mark.parametrize("method", list(Method))
def test_every_request_about_another_device_is_rejected(method: Method) -> None:
    policy = PairingPolicy(TARGET, passkey=123456, confirm=True, can_prompt=True)
    decision = policy.decide(req(method, OTHER, "000001"))
    assert decision == Decision(Verdict.REJECT, why=Why.OTHER_DEVICE)
    # and a path that names no device at all
    assert policy.decide(AgentRequest(method, "/org/bluez/hci0")).verdict is Verdict.REJECT


@pytest.mark.parametrize(
    ("policy", "method", "expected"),
    [
        (PairingPolicy(TARGET), Method.REQUEST_PASSKEY, Decision(Verdict.REJECT,
                                                                 why=Why.NO_PASSKEY)),
        (PairingPolicy(TARGET, can_prompt=True), Method.REQUEST_PASSKEY,
         Decision(Verdict.ASK_PASSKEY)),
        (PairingPolicy(TARGET, passkey=7, can_prompt=True), Method.REQUEST_PASSKEY,
         Decision(Verdict.ANSWER, passkey=7)),
        (PairingPolicy(TARGET), Method.REQUEST_CONFIRMATION, Decision(Verdict.REJECT,
                                                                      why=Why.NO_CONFIRM)),
        (PairingPolicy(TARGET, passkey=7), Method.REQUEST_CONFIRMATION,
         Decision(Verdict.REJECT, why=Why.NO_CONFIRM)),
        (PairingPolicy(TARGET, can_prompt=True), Method.REQUEST_CONFIRMATION,
         Decision(Verdict.ASK_CONFIRM)),
        (PairingPolicy(TARGET, confirm=True, can_prompt=True), Method.REQUEST_CONFIRMATION,
         Decision(Verdict.ANSWER)),
        (PairingPolicy(TARGET), Method.REQUEST_AUTHORIZATION, Decision(Verdict.ANSWER)),
        (PairingPolicy(TARGET), Method.AUTHORIZE_SERVICE, Decision(Verdict.ANSWER)),
        (PairingPolicy(TARGET), Method.DISPLAY_PASSKEY, Decision(Verdict.SHOW)),
        (PairingPolicy(TARGET), Method.DISPLAY_PIN_CODE, Decision(Verdict.SHOW)),
        (PairingPolicy(TARGET, passkey=7, can_prompt=True), Method.REQUEST_PIN_CODE,
         Decision(Verdict.REJECT, why=Why.UNSUPPORTED)),
    ],
)
def test_what_the_pairing_agent_answers_for_the_target(
    policy: PairingPolicy, method: Method, expected: Decision
) -> None:
    assert policy.decide(req(method, code="123456")) == expected


@pytest.mark.parametrize("method", list(Method))
def test_the_daemons_agent_rejects_everything(method: Method) -> None:
    assert REJECT_ALL.decide(req(method)) == Decision(Verdict.REJECT, why=Why.UNSOLICITED)


def test_the_audit_throttle_allows_each_device_once_per_window_and_caps_the_total() -> None:
    throttle = AuditThrottle(repeat_s=60.0, limit=3)
    assert throttle.allow("dev-1", 0.0)
    assert not throttle.allow("dev-1", 59.9)
    assert throttle.allow("dev-2", 1.0)
    assert throttle.allow("dev-3", 2.0)
    assert not throttle.allow("dev-4", 3.0)  # a storm of new addresses: capped
    assert throttle.allow("dev-1", 60.0)  # a new window
    assert throttle.allow("dev-4", 61.0)
    assert not throttle.allow("dev-4", 62.0)


def test_the_throttle_forgets_devices_outside_the_window() -> None:
    throttle = AuditThrottle(repeat_s=10.0, limit=10_000)
    for n in range(500):
        assert throttle.allow(f"dev-{n}", float(n * 10))
    assert len(throttle._last) == 1


def handled(method: Method, outcome: Outcome, why: Why | None = None,
            address: str = TARGET) -> AgentLog:
    return AgentLog([Handled(req(method, address), outcome, why)])


@pytest.mark.parametrize(
    ("error", "seen", "reason"),
    [
        ("AuthenticationFailed", handled(Method.REQUEST_PASSKEY, Outcome.ANSWERED),
         "wrong_passkey"),
        ("AuthenticationFailed", handled(Method.REQUEST_PASSKEY, Outcome.REJECTED,
                                         Why.NO_PASSKEY), "passkey_needed"),
        ("AuthenticationFailed", handled(Method.REQUEST_CONFIRMATION, Outcome.REJECTED,
                                         Why.NO_CONFIRM), "confirm_needed"),
        ("AuthenticationFailed", handled(Method.REQUEST_CONFIRMATION, Outcome.DECLINED),
         "not_confirmed"),
        ("AuthenticationCanceled", handled(Method.REQUEST_PASSKEY, Outcome.ANSWERED),
         "cancelled"),
        ("AuthenticationCanceled", handled(Method.REQUEST_PASSKEY, Outcome.WITHDRAWN),
         "cancelled"),
        ("AuthenticationCanceled", AgentLog(), "cancelled"),
        ("AuthenticationCanceled", handled(Method.REQUEST_PASSKEY, Outcome.ABORTED),
         "aborted"),
        ("AuthenticationTimeout", handled(Method.REQUEST_PASSKEY, Outcome.WITHDRAWN),
         "timeout"),
        ("AuthenticationTimeout", None, "timeout"),
        # nobody was asked about this device: the device refused, as before
        ("AuthenticationFailed", AgentLog(), None),
        ("AuthenticationFailed", handled(Method.REQUEST_PASSKEY, Outcome.ANSWERED,
                                         address=OTHER), None),
        ("AuthenticationFailed", None, None),
        ("AuthenticationFailed", handled(Method.REQUEST_CONFIRMATION, Outcome.ANSWERED), None),
        ("Failed", handled(Method.REQUEST_PASSKEY, Outcome.ANSWERED), None),
        ("", handled(Method.REQUEST_PASSKEY, Outcome.ANSWERED), None),
    ],
)
def test_what_a_failed_pair_means(error: str, seen: AgentLog | None, reason: str | None) -> None:
    name = ERR + error if error else ""
    assert failure_reason(name, seen, TARGET) == reason


@pytest.mark.parametrize("reason", list(FAILURES))
def test_every_failure_is_one_line_exit_2_and_names_its_cause(reason: str) -> None:
    err = failed(reason)
    assert isinstance(err, PairingRefused) and err.exit_code == 2
    text = str(err)
    assert "\n" not in text and FAILURES[reason][0] in text and "nothing was bound" in text
    assert err.reason == reason
    assert ("--passkey" in text) == (reason == "passkey_needed")


def test_the_three_named_failures_say_which() -> None:
    assert "wrong passkey" in str(failed("wrong_passkey"))
    assert "cancelled by the device" in str(failed("cancelled"))
    assert "timed out" in str(failed("timeout"))


@pytest.mark.parametrize(
    ("text", "value"),
    [("123456", 123456), (" 000042\n", 42), ("999999", 999_999), ("1234567", None),
     ("12a456", None), ("", None), ("-12345", None), ("１２３", None), ("12 34", None)],
)
def test_parse_passkey(text: str, value: int | None) -> None:
    assert parse_passkey(text) == value


async def test_the_terminal_prompter_asks_until_it_gets_a_passkey() -> None:
    read, write = os.pipe()
    out = io.StringIO()
    try:
        os.write(write, b"12x\n042042\ny\n")
        prompter = TerminalPrompter(read, out)
        assert await prompter.passkey() == 42042
        assert await prompter.confirm("031337") is True
        assert "Does the device show 031337? [y/N]" in out.getvalue()
        assert out.getvalue().count("Enter the 6-digit passkey") == 2
        assert "6 digits" in out.getvalue()
        os.write(write, b"no\n")
        assert await prompter.confirm("000001") is False
    finally:
        os.close(write)
    assert await prompter.passkey() is None  # end of input
    os.close(read)


async def test_the_terminal_prompter_gives_up_after_its_tries_and_can_be_withdrawn() -> None:
    read, write = os.pipe()
    out = io.StringIO()
    try:
        os.write(write, b"a\nb\nc\n")
        assert await TerminalPrompter(read, out, tries=3).passkey() is None
        asking = asyncio.ensure_future(TerminalPrompter(read, out).passkey())
        # it waits for a line that never comes
        await eventually(lambda: out.getvalue().endswith("shows: "), within_s=5, what="prompt")
        asking.cancel()
        with pytest.raises(asyncio.CancelledError):
            await asking
        assert out.getvalue().endswith("(the request was withdrawn)\n")
    finally:
        os.close(write)
        os.close(read)


def test_edge_status_shows_the_agent_and_its_counter_when_the_daemon_holds_one() -> None:
    from datetime import UTC, datetime

    from edge.daemon.status import DaemonFacts, status_document
    from edge.vault import VaultStats

    stats = VaultStats(pending=0, oldest_pending_age_s=None, db_bytes=0, pending_bytes=0,
                       delivered_retained=0, refusals={})
    facts = DaemonFacts(started_at=datetime(2026, 3, 1, tzinfo=UTC), healthy=True, intake={},
                        devices=[], uplink_state="connected", uplink_stats=None, parts={},
                        pairing={"agent": "holding", "unsolicited_pairing_rejected": 4})
    doc = status_document(hub="hub-1", vault=stats, cert_days=None, daemon=facts)
    assert doc["pairing"] == {"agent": "holding", "unsolicited_pairing_rejected": 4}
    without = dataclasses.replace(facts, pairing=None)
    assert "pairing" not in status_document(hub="hub-1", vault=stats, cert_days=None,
                                            daemon=without)
