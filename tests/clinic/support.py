"""Helpers for the clinic tests: a hub that seals Bundles as edge does, and a clinic setup
(keys, config, PKI) on disk."""

from __future__ import annotations

import json
import ssl
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from edge import fhir
from edge.readings import GlucoseReading, HeartRateReading, TimeSource, stable_reading_id
from edge.uplink.envelope import CONTENT_TYPE, seal
from edge.uplink.pki import CertFiles, Issued, issue, write_identity

Reading = HeartRateReading | GlucoseReading


def load_issued(files: CertFiles) -> Issued:
    cert = x509.load_pem_x509_certificate(files.cert.read_bytes())
    key = serialization.load_pem_private_key(files.key.read_bytes(), password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    return Issued(cert, key)


def issue_client(
    pki_dir: Path, ca_files: CertFiles, cn: str, *, ca: Issued | None = None
) -> CertFiles:
    """A client certificate for ``cn`` from the dev CA (or another ``ca``)."""
    return write_identity(pki_dir, cn, issue(ca or load_issued(ca_files), cn))


def sealed_bundle(readings: Sequence[Reading], hub_id: str, signer: Issued,
                  recipient: ec.EllipticCurvePublicKey) -> bytes:
    body = fhir.bundle_bytes(readings, hub_id=hub_id)
    der = signer.cert.public_bytes(serialization.Encoding.DER)
    return seal(body, signing_key=signer.key, cert_chain_der=[der], recipient=recipient).encode()


@dataclass
class HubClient:
    """A paho MQTT 5 publisher with a hub's (or anyone's) client certificate."""

    host: str
    port: int
    ca: Path
    identity: CertFiles
    client_id: str

    def __post_init__(self) -> None:
        self._c = paho.Client(callback_api_version=CallbackAPIVersion.VERSION2,
                              client_id=self.client_id, protocol=MQTTProtocolVersion.MQTTv5)
        ctx = ssl.create_default_context(cafile=str(self.ca))
        ctx.load_cert_chain(str(self.identity.cert), str(self.identity.key))
        self._c.tls_set_context(ctx)
        self._connected = threading.Event()
        self._c.on_connect = lambda *a: self._connected.set()

    def __enter__(self) -> HubClient:
        self._c.connect(self.host, self.port, keepalive=30)
        self._c.loop_start()
        assert self._connected.wait(10), "publisher could not connect"
        return self

    def __exit__(self, *exc: object) -> None:
        self._c.disconnect()
        self._c.loop_stop()

    def publish(self, topic: str, payload: bytes, *, retain: bool = False) -> None:
        """QoS 1; returns after the broker's PUBACK."""
        props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
        props.ContentType = CONTENT_TYPE
        info = self._c.publish(topic, payload, qos=1, retain=retain, properties=props)
        info.wait_for_publish(10)
        assert info.is_published(), "no PUBACK"

    def status(self, prefix: str, hub: str, **doc: Any) -> None:
        self.publish(f"{prefix}/{hub}/status", json.dumps({"hub": hub, **doc}).encode(),
                     retain=True)


# --- readings with chosen values, for the alert and rollup tests --------------------------------

_HR_ADDR = "AA:BB:CC:00:00:01"
_GL_ADDR = "AA:BB:CC:00:00:02"


def hr(patient: str, t: datetime, bpm: int) -> HeartRateReading:
    """A heart-rate reading (its id is stable: the same patient and time give the same id)."""
    return HeartRateReading(
        id=stable_reading_id(_HR_ADDR, "2a37", f"{patient}|{t.isoformat()}"), device_id=_HR_ADDR,
        patient=patient, effective_time=t, time_source=TimeSource.GATEWAY, received_at=t,
        bpm=bpm, sensor_contact="detected")


def glucose(patient: str, t: datetime, *, mg_dl: str | None = None, mmol_l: str | None = None,
            special: str | None = None) -> GlucoseReading:
    """A meter reading in mg/dL (``kg/L`` on the wire), mmol/L (``mol/L``) or a special value."""
    seq = int(t.timestamp())
    if mmol_l is not None:
        unit, conc, mg, mmol = "mol/L", Decimal(mmol_l).scaleb(-3), None, Decimal(mmol_l)
    elif mg_dl is not None:
        unit, conc, mg, mmol = "kg/L", Decimal(mg_dl).scaleb(-5), Decimal(mg_dl), None
    else:
        unit, conc, mg, mmol = "kg/L", None, None, None
    return GlucoseReading(
        id=stable_reading_id(_GL_ADDR, "2a18", f"{patient}|{seq}"), device_id=_GL_ADDR,
        patient=patient, effective_time=t, time_source=TimeSource.DEVICE_CORRECTED,
        received_at=t, sequence_number=seq % 65536, device_time=t.replace(tzinfo=None),
        concentration=conc, concentration_special=special, unit=unit, mg_dl=mg, mmol_l=mmol,
        sample_type="capillary_whole_blood", sample_location="finger")
