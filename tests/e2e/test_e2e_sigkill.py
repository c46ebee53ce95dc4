"""SIGKILL the daemon 20 times during ingest and forwarding: afterwards every glucose record on
the meter has arrived under one id, and every reading the vault ever committed has arrived."""

from __future__ import annotations

import random
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.e2e.harness import E2E, obs_id, obs_kind

KILLS = 20



def more_than(seen: int) -> Callable[[list[dict[str, Any]]], bool]:
    """A predicate: more than ``seen`` observations have arrived."""
    return lambda obs: len(obs) > seen

def test_sigkill_twenty_times_loses_nothing(tmp_path: Path) -> None:
    rng = random.Random(20)
    with E2E(tmp_path / "rig", devices="hr:1,glucose:1") as e:
        e.grant("patient-a")
        e.pair("SIM-HR-1", "patient-a")
        e.pair("SIM-GLU-1", "patient-a")
        for i in range(KILLS):
            if i % 4 == 1:
                # a new record on the meter: fetched by the next RACP sync
                e.sim_ctl("glucose", "SIM-GLU-1", "mg_dl_value=104")
            seen = len(e.observations())
            gw = e.gateway()
            if i % 2:
                # kill while readings are being forwarded
                e.wait_for_obs(more_than(seen), timeout=30)
            else:
                # kill at a random moment soon after start (ingest, RACP sync, first publish)
                time.sleep(rng.uniform(0.0, 1.5))
            gw.kill()
        assert len(e.gateways) == KILLS
        # a restarted daemon finds the links its killed predecessor left behind
        assert any("ble.orphan_link_released" in g.log_text() for g in e.gateways)

        gw = e.gateway()
        meter = e.sim_devices()["SIM-GLU-1"]
        e.quiesce(gw, ["SIM-HR-1", "SIM-GLU-1"])
        assert gw.stop() == 0

        rows = e.vault_rows()
        obs = e.observations()
        received = Counter(obs_id(o) for o in obs)
        print(f"{len(obs)} observations, {len(received)} distinct ids, "
              f"{sum(n - 1 for n in received.values())} re-sent duplicates")
        # every reading committed before any kill (and since) was acknowledged and arrived
        assert all(delivered for _, _, delivered, _ in rows)
        assert {r[0] for r in rows} <= set(received)
        assert set(received) <= {r[0] for r in rows}, "nothing arrived that was not stored"
        # every glucose record on the meter arrived, each under exactly one id
        glucose_ids = {obs_id(o) for o in obs if obs_kind(o) == "glucose"}
        glucose_times = {o["resource"]["effectiveDateTime"] for o in obs
                         if obs_kind(o) == "glucose"}
        # the simulator seeds one control-solution record: a meter check, refused by design
        assert gw_refused_glucose(e) >= 1
        assert len(glucose_ids) == int(meter["records"]) - 1
        assert len(glucose_times) == len(glucose_ids)
        assert {r[0] for r in rows if r[1] == "glucose"} == glucose_ids


def gw_refused_glucose(e: E2E) -> int:
    """Glucose refusals counted in the vault (a record refused just before a kill is
    fetched, and counted, again)."""
    status = e.edge("status", "--json").stdout
    import json

    r = json.loads(status)["refusals"]
    return int(r.get("control_solution", 0)) + int(r.get("glucose_out_of_range", 0))
