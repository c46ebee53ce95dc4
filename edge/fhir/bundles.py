"""Readings -> FHIR R4 transaction Bundles (pure): the pseudonymous Device ids, the gateway
and sensor Devices as conditional creates, and one Observation entry per reading, written
straight to JSON text (the mapping is described in :mod:`edge.fhir`).
"""

from __future__ import annotations

import functools
import uuid
from collections.abc import Iterable, Mapping
from json.encoder import encode_basestring as _s

from edge.fhir.codes import GATEWAY_TYPE, RFC3986, SENSOR_TYPES
from edge.fhir.jsontext import Resource, compact, loads
from edge.fhir.observations import observation_text
from edge.readings import GlucoseReading, HeartRateReading

# Fixed namespaces: changing one would change every Device id ever sent.
SENSOR_NAMESPACE = uuid.UUID("0b6f3f62-5f5e-5c8e-9a55-6a3d0e7d2c41")
GATEWAY_NAMESPACE = uuid.UUID("7c2a9e10-3d4b-5f61-8e0a-1b9c4d2e6f73")


# --- ids -----------------------------------------------------------------------------------------


def sensor_device_id(device_id: str, hub_id: str) -> str:
    """The sensor's stable, pseudonymous Device id (a UUID); never contains the address."""
    return str(uuid.uuid5(SENSOR_NAMESPACE, f"{hub_id}|{device_id.upper()}"))


def gateway_device_id(hub_id: str) -> str:
    """The gateway's stable Device id (a UUID) for hub ``hub_id``."""
    return str(uuid.uuid5(GATEWAY_NAMESPACE, hub_id))


# --- Bundle --------------------------------------------------------------------------------------

_OBS_REQUEST = (
    f'"request":{{"method":"POST","url":"Observation","ifNoneExist":"identifier={RFC3986}'
    '|urn:uuid:'
)


def _device_entry(device_id: str, device_type: Mapping[str, object]) -> str:
    urn = "urn:uuid:" + device_id
    return compact({
        "fullUrl": urn,
        "resource": {
            "resourceType": "Device",
            "identifier": [{"system": RFC3986, "value": urn}],
            "type": device_type,
        },
        "request": {
            "method": "POST", "url": "Device", "ifNoneExist": f"identifier={RFC3986}|{urn}",
        },
    })


@functools.lru_cache(maxsize=16)
def _gateway_parts(hub_id: str) -> tuple[str, str]:
    """(reference JSON string, Device entry) of the gateway: the same for every Bundle."""
    gateway = gateway_device_id(hub_id)
    return _s("urn:uuid:" + gateway), _device_entry(gateway, GATEWAY_TYPE)


@functools.lru_cache(maxsize=1024)
def _sensor_parts(device_id: str, hub_id: str, kind: str) -> tuple[str, str]:
    """(reference JSON string, Device entry) of a sensor: the same for every Bundle (a hub
    has tens of devices, so a Bundle of a few readings is not dominated by its Devices)."""
    sensor = sensor_device_id(device_id, hub_id)
    return _s("urn:uuid:" + sensor), _device_entry(sensor, SENSOR_TYPES[kind])


def bundle_bytes(readings: Iterable[HeartRateReading | GlucoseReading], *, hub_id: str) -> bytes:
    """The transaction Bundle of ``readings`` as compact UTF-8 JSON (what goes over MQTT):
    the gateway and sensor Devices, then one Observation per reading, each a conditional
    create on its identifier."""
    gateway_ref, gateway_entry = _gateway_parts(hub_id)
    devices = [gateway_entry]
    sensors: dict[str, str] = {}
    observations = []
    for r in readings:
        sensor_ref = sensors.get(r.device_id)
        if sensor_ref is None:
            sensor_ref, entry = _sensor_parts(r.device_id, hub_id, r.kind)
            sensors[r.device_id] = sensor_ref
            devices.append(entry)
        id_text = _s(r.id)[1:-1]
        observations.append(
            '{"fullUrl":"urn:uuid:' + id_text + '","resource":'
            + observation_text(r, sensor_ref, gateway_ref, id_text)
            + "," + _OBS_REQUEST + id_text + '"}}'
        )
    text = (
        '{"resourceType":"Bundle","type":"transaction","entry":['
        + ",".join(devices + observations) + "]}"
    )
    return text.encode()


def bundle(readings: Iterable[HeartRateReading | GlucoseReading], *, hub_id: str) -> Resource:
    """The transaction Bundle as a dict (see :func:`bundle_bytes`); numbers are Decimal/int."""
    return loads(bundle_bytes(readings, hub_id=hub_id))
