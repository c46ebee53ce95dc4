"""bleak's own objects for simulated devices: ``BLEDevice``, ``AdvertisementData`` and the GATT
service collection, with the BlueZ backend's object paths and property dicts in their details."""

from __future__ import annotations

from typing import Any

from bleak.backends.characteristic import BleakGATTCharacteristic
from bleak.backends.descriptor import BleakGATTDescriptor
from bleak.backends.device import BLEDevice
from bleak.backends.scanner import AdvertisementData
from bleak.backends.service import BleakGATTService, BleakGATTServiceCollection

from firmware_sim.devices.base import SimDevice

ADAPTER_PATH = "/org/bluez/hci0"


def device_path(address: str) -> str:
    """The BlueZ object path of a device address."""
    return f"{ADAPTER_PATH}/dev_{address.upper().replace(':', '_')}"


def _props(dev: SimDevice) -> dict[str, Any]:
    adv = dev.advertisement()
    return {
        "Address": dev.address,
        "AddressType": dev.address_type,
        "Alias": dev.name,
        "Name": dev.name,
        "Adapter": ADAPTER_PATH,
        "Connected": dev.connected,
        "Paired": dev.paired,
        "Trusted": dev.paired,
        "UUIDs": list(adv.service_uuids),
        "RSSI": adv.rssi,
        "ManufacturerData": dict(adv.manufacturer_data),
        "ServiceData": dict(adv.service_data),
    }


def ble_device_of(dev: SimDevice) -> BLEDevice:
    """bleak's ``BLEDevice`` for a simulated device (details like the BlueZ backend's)."""
    return BLEDevice(
        dev.address, dev.name, {"path": device_path(dev.address), "props": _props(dev)}
    )


def advertisement_of(dev: SimDevice) -> AdvertisementData:
    """bleak's ``AdvertisementData`` for what the device advertises now."""
    adv = dev.advertisement()
    return AdvertisementData(
        local_name=adv.name,
        manufacturer_data=dict(adv.manufacturer_data),
        service_data=dict(adv.service_data),
        service_uuids=list(adv.service_uuids),
        tx_power=adv.tx_power,
        rssi=adv.rssi,
        platform_data=(device_path(dev.address), _props(dev)),
    )


def service_collection(device: SimDevice) -> BleakGATTServiceCollection:
    """bleak's service collection for ``device``, as service discovery would build it."""
    coll = BleakGATTServiceCollection()
    path = device_path(device.address)
    for svc in device.services():
        spath = f"{path}/service{svc.handle:04x}"
        service = BleakGATTService((spath, {"UUID": svc.uuid}), svc.handle, svc.uuid)
        coll.add_service(service)
        for c in svc.characteristics:
            cpath = f"{spath}/char{c.handle:04x}"
            props: dict[str, Any] = {"UUID": c.uuid, "Flags": sorted(c.flags), "Service": spath}
            ch = BleakGATTCharacteristic(
                (cpath, props),
                c.handle,
                c.uuid,
                sorted(c.flags),  # type: ignore[arg-type]
                lambda: 20,
                service,
            )
            coll.add_characteristic(ch)
            for d in c.descriptors:
                dpath = f"{cpath}/desc{d.handle:04x}"
                coll.add_descriptor(
                    BleakGATTDescriptor((dpath, {"UUID": d.uuid}), d.handle, d.uuid, ch)
                )
    return coll
