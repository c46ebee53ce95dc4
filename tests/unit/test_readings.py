from datetime import UTC, datetime
from decimal import Decimal

import pytest
from pydantic import ValidationError

from edge.cli import main
from edge.errors import UsageError
from edge.readings import (
    HeartRateReading,
    TimeSource,
    check_pseudonym,
    reading_from_json,
    stable_reading_id,
)

NOW = datetime(2026, 3, 15, 8, 30, tzinfo=UTC)


def _hr(patient: str = "pt-1") -> HeartRateReading:
    return HeartRateReading(
        id=stable_reading_id("AA:BB:CC:DD:EE:FF", "2a37", NOW.isoformat()),
        device_id="AA:BB:CC:DD:EE:FF", patient=patient, effective_time=NOW,
        time_source=TimeSource.GATEWAY, received_at=NOW, bpm=72, sensor_contact="detected",
        rr_intervals_s=(Decimal("0.8125"),),
    )


def test_reading_round_trips_through_json_with_exact_decimals() -> None:
    r = _hr()
    back = reading_from_json(r.model_dump_json())
    assert back == r and back.rr_intervals_s == (Decimal("0.8125"),)


def test_stable_id_ignores_address_case_and_depends_on_every_part() -> None:
    a = stable_reading_id("aa:bb:cc:dd:ee:ff", "2A37", "x")
    assert a == stable_reading_id("AA:BB:CC:DD:EE:FF", "2a37", "x")
    assert a != stable_reading_id("AA:BB:CC:DD:EE:FF", "2a37", "y")
    assert a != stable_reading_id("AA:BB:CC:DD:EE:FF", "2a18", "x")


@pytest.mark.parametrize("ok", ["p", "patient-a", "pt.9", "A1-b.C", "x" * 64])
def test_usable_pseudonyms(ok: str) -> None:
    assert check_pseudonym(ok) == ok
    assert _hr(ok).patient == ok


@pytest.mark.parametrize(
    "bad",
    ["", "trailing-newline\n", "-lead", "has space", "a/b", "a+b", "a#b", "jane_doe", "x" * 65,
     "é"],
)
def test_pseudonyms_that_would_break_fhir_ids_or_topics_are_refused(bad: str) -> None:
    with pytest.raises(UsageError) as err:
        check_pseudonym(bad)
    assert bad not in str(err.value) or bad == ""
    with pytest.raises(ValidationError):
        _hr(bad)


def test_pair_refuses_a_bad_pseudonym_before_touching_anything(
    tmp_path: object, capsys: pytest.CaptureFixture[str]
) -> None:
    # No config exists at that path: the pseudonym is checked first, so the error is about it.
    rc = main(["pair", "AA:BB:CC:DD:EE:FF", "--patient", "Jane Doe",
               "--config", "/nonexistent/gateway.toml"])
    err = capsys.readouterr().err
    assert rc == 2
    assert "pseudonym" in err and "Jane Doe" not in err
