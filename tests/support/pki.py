"""A throwaway PKI for tests and the demo, plus the UplinkConfig that goes with it.

    pki = make_pki(tmp_path, "hub-1", clinicians={"clinician-1": ["patient-a"]})
    cfg = pki.uplink_config(port=broker.port)

Hostile broker certificates are in ``pki.hostile[kind]`` for kinds in
``devtools.pki.HOSTILE_KINDS`` (expired, wrong_host, other_ca, same_ca_other_key).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from devtools.pki import HOSTILE_KINDS, write_hostile
from edge.config import UplinkConfig
from edge.uplink.pki import CertFiles, DevPki, write_dev_pki


@dataclass
class TestPki:
    """A written PKI: paths, pins, the clinician -> patients assignment."""

    __test__ = False  # not a pytest class

    dev: DevPki
    clinicians: dict[str, list[str]]
    admin_name: str

    @property
    def dir(self) -> Path:
        return self.dev.out

    @property
    def hub_id(self) -> str:
        return self.dev.hub_id

    @property
    def ca(self) -> CertFiles:
        return self.dev.ca

    @property
    def broker(self) -> CertFiles:
        return self.dev.broker

    @property
    def hub(self) -> CertFiles:
        return self.dev.hub

    @property
    def admin(self) -> CertFiles:
        assert self.dev.admin is not None
        return self.dev.admin

    @property
    def hostile(self) -> dict[str, CertFiles]:
        return self.dev.extra

    def clinician(self, name: str) -> CertFiles:
        return self.dev.clinicians[name]

    def uplink_config(
        self, port: int, *, host: str = "127.0.0.1", **overrides: Any
    ) -> UplinkConfig:
        """An uplink section for this PKI: pins = [broker leaf]; override anything."""
        data: dict[str, Any] = {
            "host": host,
            "port": port,
            "ca_file": self.ca.cert,
            "client_cert": self.hub.cert,
            "client_key": self.hub.key,
            "pins": [self.broker.pin],
            "reconnect_base_s": 0.05,
            "reconnect_cap_s": 0.5,
        }
        data.update(overrides)
        return UplinkConfig.model_validate(data)

    def uplink_toml(self, port: int, *, host: str = "127.0.0.1") -> str:
        """The same as a TOML ``[uplink]`` section (for configs written to disk)."""
        return (
            "[uplink]\n"
            f'host = "{host}"\nport = {port}\n'
            f'ca_file = "{self.ca.cert}"\nclient_cert = "{self.hub.cert}"\n'
            f'client_key = "{self.hub.key}"\npins = ["{self.broker.pin}", "{self.ca.pin}"]\n'
        )


def make_pki(
    tmpdir: Path,
    hub_id: str = "hub-1",
    clinicians: Mapping[str, Sequence[str]] | None = None,
    *,
    admin: str = "admin",
    hostile: Sequence[str] = HOSTILE_KINDS,
) -> TestPki:
    """Write a PKI under ``tmpdir/pki``; every hostile broker certificate by default."""
    assignment = {k: list(v) for k, v in (clinicians or {"clinician-1": ["patient-a"]}).items()}
    dev = write_dev_pki(
        Path(tmpdir) / "pki",
        hub_id=hub_id,
        clinicians=assignment,
        admin=admin,
    )
    write_hostile(dev, hostile)
    return TestPki(dev=dev, clinicians=assignment, admin_name=admin)
