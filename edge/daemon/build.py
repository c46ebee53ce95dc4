"""Building the daemon's parts from config: the vault (refused when damaged), the BLE manager
and the forwarder. Each builder takes what it needs explicitly, so the wiring stays wiring and
tests put fakes in place of any part through the daemon's factories."""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Awaitable, Callable, Mapping
from datetime import datetime
from pathlib import Path

from edge.ble.ports import ClientFactory, ScannerFactory
from edge.clock import Clock
from edge.config import GatewayConfig
from edge.daemon.ports import BleLike, DaemonVault, ForwarderLike, VaultFactory
from edge.intake import ConsentGate, Intake
from edge.log import get_logger
from edge.uplink.ports import Connector, StatusProvider

log = get_logger("edge.daemon")


async def open_vault(
    config: GatewayConfig, *, key: bytes | None, factory: VaultFactory | None, clock: Clock
) -> DaemonVault:
    """The vault: from a test's factory, the given key, or the configured key provider (an
    interrupted `edge keys rotate` is finished on the way)."""
    if factory is not None:
        return await factory()
    if key is None:
        from edge.vault.rotation import open_vault as open_by_provider

        return await open_by_provider(config.vault, clock=clock, actor="daemon")
    from edge.vault import Vault

    return await Vault.open(config.vault, key, clock=clock)


async def refuse_a_damaged_vault(
    vault: DaemonVault, *, budget_s: float, path: Path, close: Callable[[], Awaitable[None]]
) -> None:
    """The start-up integrity check, bounded in time: a damaged vault is refused naming the
    damage and the recovery (found later, by the first consent revoke that touches a bad page,
    it would fail that and every vault operation after it)."""
    check = getattr(vault, "damage_check", None)
    if check is None:  # a fake vault
        return
    from edge.errors import VaultCorrupt
    from edge.vault.maintenance import Damage, damaged_message

    try:
        damage: Damage = await check(budget_s)
    except BaseException:
        await close()
        raise
    if not damage.complete:
        log.warning("daemon.integrity_check_incomplete", budget_s=budget_s)
    if damage.damaged:
        log.error("daemon.vault_damaged", hmac_pages=len(damage.hmac_pages),
                  tables=",".join(damage.tables))
        await close()
        raise VaultCorrupt(damaged_message(path, damage))


def make_ble(
    config: GatewayConfig, vault: DaemonVault, sink: Intake, *,
    scanner_factory: ScannerFactory | None, client_factory: ClientFactory | None, clock: Clock,
) -> BleLike:
    """The BLE manager over bleak's real backend, or over the injected factories."""
    from edge.ble import BleManager
    from edge.ble.adapters import BluezAdapters
    from edge.ble.ports import bleak_client_factory, bleak_scanner_factory

    ble = config.ble
    # bleak's real backend: one scanner and client factory per adapter, and BlueZ's adapters
    # followed (and wedged ones power-cycled) over the system bus
    real = scanner_factory is None and client_factory is None
    return BleManager(
        ble,
        vault,
        sink,
        scanner_factory=scanner_factory or bleak_scanner_factory(ble.adapter),
        client_factory=client_factory or bleak_client_factory(ble.adapter),
        scanners_for=bleak_scanner_factory if real else None,
        clients_for=bleak_client_factory if real else None,
        adapter_control=BluezAdapters() if real else None,
        audit=functools.partial(vault.audit, "daemon"),
        clock=clock,
        local_tz=datetime.now().astimezone().tzinfo,
    )


def make_forwarder(
    config: GatewayConfig, vault: DaemonVault, gate: ConsentGate, *,
    connector: Connector | None, clock: Clock, env: Mapping[str, str],
    status_provider: StatusProvider,
) -> ForwarderLike:
    """The forwarder with its real connector and the `[e2e]` encoding (keys read here, once
    per forwarder start)."""
    from edge.uplink.forwarder import Forwarder
    from edge.uplink.mqtt import TlsMqttConnector
    from edge.uplink.sealing import encoding_for
    from edge.uplink.tls import client_cert_not_after

    uplink, hub = config.uplink, config.hub.id
    not_after = None
    with contextlib.suppress(OSError, ValueError):  # unreadable: status shows no expiry
        not_after = client_cert_not_after(uplink)
    encoding = encoding_for(config, environ=env)
    return Forwarder(
        uplink,
        hub,
        vault,
        connector=connector or TlsMqttConnector(uplink, hub),
        clock=clock,
        consent=gate,
        status_provider=status_provider,
        encoder=encoding.encode,
        content_type=encoding.content_type,
        cert_not_after=not_after,
    )
