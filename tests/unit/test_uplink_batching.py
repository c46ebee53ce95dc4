"""The batching policy as a state machine: packing, routing, the read cursor, the window and
ack deadlines. Plain calls and tables; no event loop, no clock, no polling."""

from __future__ import annotations

import json
from collections.abc import Sequence

import pytest

from edge.testing.uplink import ids_encoder
from edge.uplink.batching import (
    BYTES_HEADROOM,
    Batcher,
    Group,
    Limits,
    Message,
    Read,
    SizeEstimate,
    encode_group,
)
from edge.uplink.ports import PendingLike
from edge.uplink.topics import TopicRouter, topic_safe
from tests.support.uplink_fakes import Row

PREFIX = "edge/v1/hub-1/obs/"


def rows(*patients: str, size: int = 100, start: int = 1) -> list[Row]:
    """One row per patient given, sequence numbers from ``start``."""
    return [Row(start + i, f"r{start + i}", p, b"x" * size) for i, p in enumerate(patients)]


def batcher(
    *, max_readings: int = 3, max_bytes: int = 262_144, window: int = 2, timeout: float = 30.0,
    ratio: float = 3.0,
) -> Batcher:
    limits = Limits(max_readings=max_readings, max_bytes=max_bytes, window=window,
                    ack_timeout_s=timeout)
    return Batcher(limits, TopicRouter("edge/v1", "hub-1"), SizeEstimate(ratio))


def loaded(b: Batcher, pending: Sequence[Row]) -> Batcher:
    read = b.next_read()
    assert read is not None
    b.rows_read(pending)
    return b


def shape(groups: Sequence[Group]) -> list[tuple[str, list[str]]]:
    return [(g.topic.removeprefix(PREFIX), [r.id for r in g.rows]) for g in groups]


# --- packing -----------------------------------------------------------------------------------

PACKING = [
    # (patients in outbox order, max_readings, window, expected groups, rows left buffered)
    ("one patient, full groups", "aaaa", 3, 10, [("a", ["r1", "r2", "r3"]), ("a", ["r4"])], 0),
    ("per patient", "abab", 3, 10, [("a", ["r1", "r3"]), ("b", ["r2", "r4"])], 0),
    ("window caps groups", "aaaaaaa", 3, 2, [("a", ["r1", "r2", "r3"]), ("a", ["r4", "r5", "r6"])],
     1),
    ("prefix stops at a new group", "abc", 3, 2, [("a", ["r1"]), ("b", ["r2"])], 1),
    ("a later row joins its open group", "aba", 3, 2, [("a", ["r1", "r3"]), ("b", ["r2"])], 0),
    ("one reading per message", "aa", 1, 5, [("a", ["r1"]), ("a", ["r2"])], 0),
]


@pytest.mark.parametrize(
    ("patients", "max_readings", "window", "expected", "left"),
    [c[1:] for c in PACKING], ids=[c[0] for c in PACKING],
)
def test_packing(
    patients: str, max_readings: int, window: int, expected: list[tuple[str, list[str]]],
    left: int,
) -> None:
    b = loaded(batcher(max_readings=max_readings, window=window), rows(*patients))
    packing = b.pack()
    assert shape(packing.groups) == expected
    assert packing.unroutable == 0
    assert b.buffered == left


@pytest.mark.parametrize(
    ("payload", "max_bytes", "ratio", "per_group"),
    [
        (1000, 10_000, 3.0, 2),  # 3000 estimated each; budget 8500
        (1000, 10_000, 1.0, 3),  # max_readings binds first
        (4000, 10_000, 3.0, 1),  # bigger than the budget alone: still sent, alone
    ],
)
def test_groups_stay_under_the_estimated_byte_budget(
    payload: int, max_bytes: int, ratio: float, per_group: int
) -> None:
    b = loaded(batcher(max_bytes=max_bytes, ratio=ratio, window=10), rows(*"aaaaaa", size=payload))
    groups = b.pack().groups
    assert [len(g.rows) for g in groups] == [per_group] * (6 // per_group)
    assert all(len(g.rows) * payload * ratio <= max_bytes * BYTES_HEADROOM or len(g.rows) == 1
               for g in groups)


@pytest.mark.parametrize("bad", ["", "a/b", "a+", "#", "x\0y"])
def test_unroutable_rows_are_consumed_and_counted(bad: str) -> None:
    assert not topic_safe(bad)
    b = loaded(batcher(window=5), rows("a", bad, "a"))
    packing = b.pack()
    assert shape(packing.groups) == [("a", ["r1", "r3"])]
    assert packing.unroutable == 1
    assert b.buffered == 0


def test_the_router_names_each_patients_topic() -> None:
    router = TopicRouter("edge/v1", "hub-1")
    assert router.topic("patient-a") == PREFIX + "patient-a"
    assert router.topic("patient-a") == PREFIX + "patient-a"  # cached
    assert router.topic("a/b") is None


def test_nothing_is_packed_while_the_window_is_full() -> None:
    b = loaded(batcher(window=1), rows("a", "b"))
    (group,) = b.pack().groups
    token = b.sent(Message(group.topic, ("r1",), b"{}"), now=0.0)
    assert b.pack().groups == []
    assert b.settle(token) is not None
    assert shape(b.pack().groups) == [("b", ["r2"])]


# --- the read cursor ----------------------------------------------------------------------------


def test_read_cursor_table() -> None:
    b = batcher(max_readings=2, window=1)  # a read asks for 1 * 2 * 2 = 4 rows
    steps: list[tuple[str, Read | None]] = []
    steps.append(("start", b.next_read()))
    steps.append(("while reading", b.next_read()))
    b.rows_read(rows(*"aaaa"))  # a full chunk: there may be more
    steps.append(("buffer full", b.next_read()))
    b.pack()
    steps.append(("after packing", b.next_read()))
    b.rows_read(rows("a", start=5))  # short: the outbox is drained
    b.pack()
    steps.append(("drained", b.next_read()))
    b.wake()
    steps.append(("woken", b.next_read()))
    b.rows_read([])
    steps.append(("empty", b.next_read()))
    assert steps == [
        ("start", Read(4, 0)),
        ("while reading", None),
        ("buffer full", None),
        ("after packing", Read(4, 4)),
        ("drained", None),
        ("woken", Read(4, 5)),
        ("empty", None),
    ]


def test_rows_without_consent_are_dropped_and_the_cursor_moves_past_them() -> None:
    b = batcher(window=5)
    assert b.next_read() == Read(30, 0)
    dropped = b.rows_read(rows("a", "b", "a", "b"), lambda p: p == "a")
    assert dropped == 2
    assert shape(b.pack().groups) == [("a", ["r1", "r3"])]
    b.wake()
    assert b.next_read() == Read(30, 4)


def test_drain_stops_reading_and_packing_but_settles_in_flight() -> None:
    b = loaded(batcher(window=1), rows("a", "a", "a", "a"))
    (group,) = b.pack().groups
    token = b.sent(Message(group.topic, tuple(r.id for r in group.rows), b"{}"), now=0.0)
    b.drain()
    b.wake()
    assert b.next_read() is None
    assert b.settle(token) is not None
    assert b.pack().groups == []
    assert b.in_flight == 0


# --- the window and ack deadlines ----------------------------------------------------------------

DEADLINES = [
    # (send times, now, overdue, seconds to the next look)
    ((), 0.0, False, 30.0),
    ((0.0,), 10.0, False, 20.0),
    ((0.0, 5.0), 29.9, False, pytest.approx(0.1)),
    ((0.0, 5.0), 30.0, True, 0.0),
    ((0.0, 5.0), 31.0, True, 0.0),
]


@pytest.mark.parametrize(("sent_at", "now", "overdue", "wait"), DEADLINES)
def test_ack_deadlines(sent_at: tuple[float, ...], now: float, overdue: bool, wait: float) -> None:
    b = batcher(window=5, timeout=30.0)
    for i, t in enumerate(sent_at):
        b.sent(Message(PREFIX + "a", (f"r{i}",), b"{}"), now=t)
    assert b.overdue(now) is overdue
    assert b.next_ack_check(now) == wait


def test_the_oldest_unacknowledged_message_sets_the_deadline() -> None:
    b = batcher(window=5, timeout=30.0)
    first = b.sent(Message(PREFIX + "a", ("r1", "r2"), b"{}"), now=0.0)
    b.sent(Message(PREFIX + "b", ("r3",), b"{}"), now=10.0)
    assert b.ack_deadline() == 30.0
    settled = b.settle(first)
    assert settled is not None and settled.ids == ("r1", "r2")
    assert b.settle(first) is None  # settles once
    assert b.ack_deadline() == 40.0
    assert b.unacknowledged() == ["r3"]  # what the next connection re-sends


# --- encoding ----------------------------------------------------------------------------------


def fat(rows: Sequence[PendingLike]) -> bytes:
    return json.dumps({"ids": [r.id for r in rows], "pad": "y" * (1000 * len(rows))}).encode()


def test_a_group_that_encodes_too_big_is_halved() -> None:
    group = Group(PREFIX + "a", tuple(rows(*"aaaa")))
    encoded = encode_group(group, fat, SizeEstimate(), max_bytes=2500)
    assert [m.ids for m in encoded.messages] == [("r1", "r2"), ("r3", "r4")]
    assert all(len(m.payload) <= 2500 for m in encoded.messages)
    assert encoded.unencodable == []


def test_a_row_that_does_not_encode_is_isolated() -> None:
    def picky(rows: Sequence[PendingLike]) -> bytes:
        if any(r.id == "r2" for r in rows):
            raise ValueError("corrupt")
        return ids_encoder(rows)

    group = Group(PREFIX + "a", tuple(rows(*"aaa")))
    encoded = encode_group(group, picky, SizeEstimate(), max_bytes=10_000)
    assert [m.ids for m in encoded.messages] == [("r1",), ("r3",)]
    assert encoded.unencodable == ["ValueError"]


def test_the_size_estimate_learns_from_encoded_messages() -> None:
    estimate = SizeEstimate(3.0)
    estimate.learn(raw_bytes=100, encoded_bytes=500)
    assert estimate.ratio == pytest.approx(3.4)
    estimate.learn(raw_bytes=0, encoded_bytes=500)  # nothing stored: nothing learned
    assert estimate.ratio == pytest.approx(3.4)
