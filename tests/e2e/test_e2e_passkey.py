"""The whole daemon with passkey meters: ``edge pair --passkey`` with the right code bonds and
binds, and ``edge run`` forwards exactly the records the meter holds; a wrong code exits 2 with
``wrong passkey``, binds nothing and nothing of that meter is forwarded; with two adapters,
``edge pair --adapter hci1`` bonds there and the daemon syncs the meter through hci1."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

from tests.e2e.harness import E2E, obs_kind, obs_patient, running

PASSKEY = "123456"
#: the meter paired with a wrong code (from the --devices spec: pairing keys)
OTHER_SPEC = "glucose:1:pairing=passkey:passkey=222222"
VALUES = (101, 117, 94, 142)  # mg/dL, the good meter's whole memory (all plausible)


def add_meter(e: E2E, name: str) -> str:
    """A passkey meter with no history, then exactly :data:`VALUES` stored on it; its
    address."""
    added = json.loads(e.sim_ctl("add", "glucose", "pairing=passkey", f"passkey={PASSKEY}",
                                 "history=0", "--name", name))
    for value in VALUES:
        e.sim_ctl("glucose", name, f"mg_dl_value={value}")
    assert int(e.sim_devices()[name]["records"]) == len(VALUES)
    return str(added["address"])


def use_adapters(e: E2E, *names: str) -> None:
    """The rig's config with ``[ble] adapters`` (the harness's ``config_extra`` lands after
    ``[daemon]``, so it cannot add a [ble] key): a copy of its file, used from now on."""
    base = Path(e.env["EDGE_CONFIG"])
    listed = ", ".join(f'"{n}"' for n in names)
    text = base.read_text().replace("[ble]\n", f"[ble]\nadapters = [{listed}]\n", 1)
    assert f"adapters = [{listed}]" in text
    path = base.with_name("gateway-adapters.toml")
    path.write_text(text)
    path.chmod(0o600)
    e.env["EDGE_CONFIG"] = str(path)


def glucose_values(obs: list[dict[str, Any]]) -> Counter[float]:
    return Counter(float(o["resource"]["valueQuantity"]["value"]) for o in obs
                   if obs_kind(o) == "glucose")


def device_rows(e: E2E) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = json.loads(e.edge("devices", "--json").stdout)
    return rows


def test_a_passkey_meter_pairs_and_forwards_its_records_and_a_wrong_passkey_binds_nothing(
    tmp_path: Path,
) -> None:
    with E2E(tmp_path / "rig", devices=OTHER_SPEC) as e:
        e.grant("patient-a")
        e.grant("patient-b")  # consent is there: only the failed pairing keeps it out
        good = add_meter(e, "SIM-GLU-P")
        other = e.address("SIM-GLU-1")

        done = e.edge("pair", good, "--patient", "patient-a", "--passkey", PASSKEY,
                      timeout=90)
        assert "paired glucose" in done.stdout and "via hci0" in done.stdout

        bad = e.edge("pair", other, "--patient", "patient-b", "--passkey", "654321",
                     timeout=90, check=False)
        assert bad.returncode == 2
        lines = bad.stderr.strip().splitlines()
        assert len(lines) == 1 and "wrong passkey" in lines[0], bad.stderr
        for secret in (other, "654321", "222222", "patient-b"):
            assert secret not in bad.stderr
        sim = e.sim_devices()
        assert sim["SIM-GLU-1"]["paired"] is False and sim["SIM-GLU-P"]["paired"] is True
        assert [r["address"] for r in device_rows(e)] == [good]

        with running(e) as gw:
            e.wait_for_obs(lambda obs: sum(glucose_values(obs).values()) >= len(VALUES),
                           timeout=60)
            status = e.wait_status(gw, lambda s: s["queue_depth"] == 0 and any(
                d["address"] == good and d["readings"] >= len(VALUES) for d in s["devices"]))
            assert [d["address"] for d in status["devices"]] == [good]
            assert [r["address"] for r in device_rows(e)] == [good]
            e.quiesce(gw, ["SIM-GLU-P", "SIM-GLU-1"])
        obs = e.observations()
        # exactly the meter's records: each value once, nothing else, all to patient-a
        assert glucose_values(obs) == Counter(float(v) for v in VALUES)
        assert {obs_patient(o) for o in obs} == {"patient-a"}
        assert all(r[3] == "patient-a" for r in e.vault_rows())


def test_edge_pair_through_hci1_bonds_there_and_the_daemon_syncs_through_hci1(
    tmp_path: Path,
) -> None:
    with E2E(tmp_path / "rig", devices="hr:0") as e:
        e.sim_ctl("add-adapter", "hci1")
        use_adapters(e, "hci0", "hci1")
        e.grant("patient-a")
        good = add_meter(e, "SIM-GLU-P")

        refused = e.edge("pair", good, "--patient", "patient-a", "--passkey", PASSKEY,
                         "--adapter", "hci7", check=False)
        assert refused.returncode == 2
        assert refused.stderr.strip().count("\n") == 0 and "hci0, hci1" in refused.stderr

        done = e.edge("pair", good, "--patient", "patient-a", "--passkey", PASSKEY,
                      "--adapter", "hci1", timeout=90)
        assert "via hci1" in done.stdout
        bonded = {a["name"] for a in json.loads(e.sim_ctl("adapters")) if good in a["bonded"]}
        assert bonded == {"hci1"}

        with running(e) as gw:
            e.wait_for_obs(lambda obs: sum(glucose_values(obs).values()) >= len(VALUES),
                           timeout=60)
            status = e.wait_status(gw, lambda s: s["queue_depth"] == 0)
            (device,) = status["devices"]
            assert device["address"] == good and device["adapter"] == "hci1"
            assert status["adapters"]["hci1"]["devices"] == 1
            assert status["adapters"]["hci0"]["devices"] == 0
            assert "via hci1" in e.edge("status").stdout
            e.quiesce(gw, ["SIM-GLU-P"])
        assert glucose_values(e.observations()) == Counter(float(v) for v in VALUES)
