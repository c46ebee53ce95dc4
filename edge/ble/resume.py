"""Keeping the progress of a glucose transfer that ended early (pure: no I/O, no clock).

A meter that aborts every report after a few records ("procedure not completed"), drops the
link or goes silent mid-transfer has still sent records. They are stored (reading ids are
stable, so a later re-fetch stores nothing twice), and the cursor moves to the newest of them
when that is safe, so that the next attempt resumes there: a meter that always stops after
five records delivers everything, a few records per attempt.

Moving the cursor is safe only when nothing older can still be missing: the records arrived
in the meter's order, oldest first, each newer than the one before (RACP reports records in
stored order). A meter that sends newest first and then stops would otherwise have its older
records skipped for good; its records are stored, the cursor stays.

The backoff follows from the outcome: an attempt that moved the cursor is progress (the
supervisor's backoff restarts from its base, so the transfer resumes soon); one that did not
lets the capped backoff grow (:class:`edge.backoff.Backoff`).
"""

from __future__ import annotations

import itertools

from edge.gatt.racp_client import SEQ_MODULO, WINDOW, GlucoseRecord, SyncResult


def resume_point(result: SyncResult) -> GlucoseRecord | None:
    """The record the cursor may move to after a transfer that did not complete, or None.

    The newest record when every record arrived oldest first (in the meter's sequence order,
    wrap included, all within half the sequence space of the first), else None. Duplicates
    and records outside the window after the cursor do not count; two records sharing a
    sequence number make it None (nothing to vouch for the order).
    """
    records = result.records
    if not records:
        return None
    by_sequence = {r.measurement.sequence_number: r for r in records}
    if len(by_sequence) != len(records):
        return None
    arrival = list(dict.fromkeys(s for s in result.sequences_seen if s in by_sequence))
    if len(arrival) != len(records):
        return None
    # from the cursor the transfer asked from; a report of all records from the first one
    origin = result.requested_from if result.requested_from is not None else arrival[0]
    ages = [(s - origin) % SEQ_MODULO for s in arrival]
    if any(a >= b for a, b in itertools.pairwise(ages)) or ages[-1] >= WINDOW:
        # out of order, or "ascending" only the long way round the circle (24 then 23)
        return None
    return by_sequence[arrival[-1]]
