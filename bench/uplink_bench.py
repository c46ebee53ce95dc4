"""Uplink benchmark: one mosquitto (TLS, mTLS, the shipped config), one run, JSON lines.

- ``uplink.drain_per_s``: 200,000 pending readings in the SQLCipher vault -> FHIR Bundles ->
  QoS 1 PUBLISH -> PUBACK -> marked delivered, by the real Forwarder ([e2e] mode = "off").
  ``uplink.drain_e2e_per_s``: the same with each Bundle sealed ([e2e] sign+encrypt, the
  recommended setting).
- ``uplink.raw_pipeline_per_s``: the same readings with their FHIR entries already encoded,
  in a SQLCipher table with the same settings; plain paho (its own network thread) publishes
  the same batch size with the same window and deletes the rows on PUBACK. The ceiling.
- ``uplink.drain_over_raw``: drain with e2e on / the raw ceiling (which seals nothing);
  ``uplink.drain_plain_over_raw``: the same with e2e off.
- ``uplink.e2e_us_per_bundle``: the cost of sealing one 50-reading Bundle (JWS ES256 inside
  JWE ECDH-ES+A256KW / A256GCM), single-threaded, keys loaded once as the daemon does.
- ``uplink.e2e_compressed_us_per_bundle``: the same with ``[e2e] compress`` (JWE ``zip``
  DEF); ``sealed_bytes`` beside each says what it saves on the wire.
- ``uplink.latency_p50_ms`` / ``uplink.latency_p99_ms``: ``vault.append`` of one reading ->
  its PUBACK, one reading every 20 ms for 20 s.

Run: ``python -m bench`` (all benchmarks) or ``python -m bench.uplink_bench [--readings N]``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import gc
import json
import os
import socket
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import sqlcipher3
from cryptography.hazmat.primitives.asymmetric import ec
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

import bench
from edge import fhir
from edge.clock import SystemClock
from edge.config import UplinkConfig, VaultConfig
from edge.log import configure_logging
from edge.readings import GlucoseReading, HeartRateReading
from edge.testing.uplink import AllowAll
from edge.uplink.envelope import CONTENT_TYPE
from edge.uplink.fhir_encoding import FHIR_CONTENT_TYPE
from edge.uplink.forwarder import Forwarder
from edge.uplink.mqtt import TlsMqttConnector
from edge.uplink.ports import LinkInfo, MqttLink, Will
from edge.uplink.sealing import SealingEncoder, load_signer
from edge.uplink.tls import build_context, client_cert_not_after
from edge.vault import Vault
from tests.support.mosquitto import start_broker
from tests.support.pki import TestPki, make_pki
from tests.support.uplink_fakes import make_readings, real_forwarder

AnyReading = HeartRateReading | GlucoseReading
PATIENTS = ("patient-a", "patient-b", "patient-c", "patient-d")
TARGETS = {
    "uplink.drain_per_s": (">=", 50_000),
    "uplink.drain_over_raw": (">=", 0.5),
    # a 50-reading Bundle sealed in well under a millisecond keeps sealing off the drain's path
    "uplink.e2e_us_per_bundle": ("<=", 1000.0),
    "uplink.e2e_compressed_us_per_bundle": ("<=", 1000.0),
    "uplink.latency_p99_ms": ("<=", 10.0),
}


def emit(figure: str, value: float, unit: str, **extra: Any) -> None:
    """One figure of this benchmark (see :func:`bench.emit`)."""
    bench.emit(figure, value, unit, TARGETS, **extra)


def vault_config(path: Path) -> VaultConfig:
    return VaultConfig(
        path=path, key_provider="env", allow_env_key=True, max_pending=10_000_000,
        max_pending_bytes=4 << 30,
    )


CHUNK = 2000


def chunks(n: int, start: int = 0) -> Iterator[list[AnyReading]]:
    """The benchmark's readings, generated chunk by chunk: holding 200,000 pydantic objects
    for the whole run would make every full garbage collection walk them, a cost the
    gateway (which never holds a backlog in memory) does not have."""
    for i in range(start, start + n, CHUNK):
        yield make_readings(min(CHUNK, start + n - i), PATIENTS, start=i)


async def fill_vault(vault: Vault, n: int) -> None:
    for part in chunks(n):
        await vault.append(part)


# --- the gateway's drain ------------------------------------------------------------------


async def drain(cfg: UplinkConfig, hub: str, db: Path, key: bytes, n: int,
                sealer: SealingEncoder | None = None) -> float:
    async with await Vault.open(vault_config(db), key) as vault:
        await fill_vault(vault, n)
        gc.collect()
        done = asyncio.Event()
        delivered = 0

        def on_delivered(ids: Sequence[str]) -> None:
            nonlocal delivered
            delivered += len(ids)
            if delivered >= n:
                done.set()

        if sealer is None:
            fwd = real_forwarder(cfg, hub, vault, on_delivered=on_delivered)
        else:
            # as the daemon wires it with [e2e] sign+encrypt
            fwd = Forwarder(
                cfg, hub, vault, connector=TlsMqttConnector(cfg, hub), clock=SystemClock(),
                consent=AllowAll(), cert_not_after=client_cert_not_after(cfg),
                on_delivered=on_delivered, encoder=sealer, content_type=CONTENT_TYPE,
            )
        t0 = time.perf_counter()
        task = asyncio.create_task(fwd.run())
        await asyncio.wait_for(done.wait(), 600)
        elapsed = time.perf_counter() - t0
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        st = await vault.stats()
        if st.pending:
            raise RuntimeError(f"drain left {st.pending} readings pending")
    return n / elapsed


# --- the cost of sealing -------------------------------------------------------------------


def seal_cost(sealer: SealingEncoder, hub: str, batch: int, bundles: int) -> tuple[float, int,
                                                                                    int]:
    """(microseconds per sealed Bundle, its plain size, its sealed size)."""
    readings = make_readings(batch * bundles, PATIENTS[:1], start=10_000_000)
    plain = [fhir.bundle_bytes(readings[i:i + batch], hub_id=hub)
             for i in range(0, len(readings), batch)]
    sealer.seal(plain[0])  # warm up (imports, key objects)
    gc.collect()
    t0 = time.perf_counter()
    sealed = [sealer.seal(b) for b in plain]
    elapsed = time.perf_counter() - t0
    return elapsed / len(plain) * 1e6, len(plain[0]), len(sealed[0])


# --- the raw ceiling: plain paho + SQLCipher -----------------------------------------------


def _entry(r: AnyReading, hub: str) -> bytes:
    text = fhir.bundle_bytes([r], hub_id=hub)
    start = text.index(b'{"fullUrl":"urn:uuid:' + r.id.encode() + b'"')
    return text[start:-2]


def raw_pipeline(cfg: UplinkConfig, hub: str, db: Path, key: bytes, n: int) -> float:
    conn = sqlcipher3.connect(str(db), isolation_level=None, check_same_thread=False)
    conn.execute(f"PRAGMA key = \"x'{key.hex()}'\"")
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = FULL")
    conn.execute(
        "CREATE TABLE outbox(seq INTEGER PRIMARY KEY AUTOINCREMENT, patient TEXT, payload BLOB)"
    )
    for part in chunks(n):
        conn.execute("BEGIN")
        conn.executemany(
            "INSERT INTO outbox(patient, payload) VALUES (?, ?)",
            [(r.patient, _entry(r, hub)) for r in part],
        )
        conn.execute("COMMIT")
    gc.collect()

    head = b'{"resourceType":"Bundle","type":"transaction","entry":['
    batch, window = cfg.batch_max_readings, cfg.inflight_window
    slots = threading.Semaphore(window)
    lock = threading.Lock()
    # PUBACKed message ids, appended by paho's thread; by_mid is the main thread's only.
    acked: list[int] = []
    by_mid: dict[int, tuple[int, int]] = {}
    remaining = n

    client = paho.Client(
        callback_api_version=CallbackAPIVersion.VERSION2, client_id=hub + "-raw",
        protocol=MQTTProtocolVersion.MQTTv5,
    )
    client.tls_set_context(build_context(cfg))
    client.max_inflight_messages = 0  # the window is ours, as in the forwarder
    connected = threading.Event()
    client.on_connect = lambda c, u, f, rc, p: connected.set()

    def on_publish(c: Any, u: Any, mid: int, rc: Any, p: Any) -> None:
        with lock:
            acked.append(mid)
        slots.release()

    client.on_publish = on_publish
    props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
    props.ContentType = FHIR_CONTENT_TYPE
    props.MessageExpiryInterval = cfg.message_expiry_s

    t0 = time.perf_counter()
    client.connect(cfg.host, cfg.port, keepalive=30)
    client.loop_start()
    connected.wait(10)
    # Hand the TCP socket the same no-delay setting the gateway uses.
    sock = client.socket()
    if isinstance(sock, socket.socket):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    cursor = 0
    while remaining:
        with lock:
            mids, acked[:] = list(acked), []
        done = [by_mid.pop(m) for m in mids]
        if done:
            conn.execute("BEGIN")
            conn.executemany("DELETE FROM outbox WHERE seq BETWEEN ? AND ?", done)
            conn.execute("COMMIT")
            remaining -= sum(b - a + 1 for a, b in done)
            if not remaining:
                break
        got = conn.execute(
            "SELECT seq, payload FROM outbox WHERE seq > ? ORDER BY seq LIMIT ?",
            (cursor, batch * window),
        ).fetchall()
        if not got:
            # everything is in flight: wait for a PUBACK
            slots.acquire()
            slots.release()
            continue
        for i in range(0, len(got), batch):
            part = got[i : i + batch]
            if not slots.acquire(timeout=0 if i else 30):
                break
            payload = head + b",".join(p for _, p in part) + b"]}"
            # paho's lock is taken inside publish and around on_publish: never hold ours here.
            info = client.publish(f"{cfg.topic_prefix}/{hub}/obs/bench", payload, qos=1,
                                  properties=props)
            if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
                raise RuntimeError(f"raw publish failed: {info.rc}")
            by_mid[info.mid] = (part[0][0], part[-1][0])
            cursor = part[-1][0]
    elapsed = time.perf_counter() - t0
    client.disconnect()
    client.loop_stop()
    conn.close()
    return n / elapsed


# --- latency -------------------------------------------------------------------------------


class _TimingLink:
    """Wraps a real link; records the PUBACK time of every observation message."""

    def __init__(self, inner: MqttLink, acks: dict[str, float], event: asyncio.Event) -> None:
        self._inner = inner
        self._acks = acks
        self._event = event

    @property
    def info(self) -> LinkInfo:
        return self._inner.info

    @property
    def is_closed(self) -> bool:
        return self._inner.is_closed

    async def wait_closed(self) -> BaseException | None:
        return await self._inner.wait_closed()

    async def close(self) -> None:
        await self._inner.close()

    def abort(self) -> None:
        self._inner.abort()

    def publish(
        self,
        topic: str,
        payload: bytes,
        *,
        retain: bool = False,
        content_type: str | None = None,
        message_expiry_s: int | None = None,
    ) -> asyncio.Future[None]:
        fut = self._inner.publish(
            topic, payload, retain=retain, content_type=content_type,
            message_expiry_s=message_expiry_s,
        )
        if "/obs/" in topic:
            ids = [e["fullUrl"].removeprefix("urn:uuid:") for e in json.loads(payload)["entry"]
                   if e["resource"]["resourceType"] == "Observation"]

            def done(f: asyncio.Future[None]) -> None:
                if not f.cancelled() and f.exception() is None:
                    now = time.perf_counter()
                    for i in ids:
                        self._acks[i] = now
                    self._event.set()

            fut.add_done_callback(done)
        return fut


async def latency(
    cfg: UplinkConfig, hub: str, db: Path, key: bytes, readings: Sequence[AnyReading],
    rate_hz: float, seconds: float,
) -> tuple[list[float], list[float]]:
    acks: dict[str, float] = {}
    acked = asyncio.Event()
    connector = TlsMqttConnector(cfg, hub)
    connected = asyncio.Event()

    async def factory(will: Will) -> MqttLink:
        link = _TimingLink(await connector(will), acks, acked)
        connected.set()
        return link

    from_append: list[float] = []
    from_commit: list[float] = []
    async with await Vault.open(vault_config(db), key) as vault:
        fwd = real_forwarder(cfg, hub, vault, connector=factory)
        task = asyncio.create_task(fwd.run())
        await asyncio.wait_for(connected.wait(), 10)
        await asyncio.sleep(0.2)  # let the first status message go by
        interval = 1.0 / rate_hz
        n = int(rate_hz * seconds)
        start = time.perf_counter()
        for i, r in enumerate(readings[:n]):
            t0 = time.perf_counter()
            await vault.append([r])
            t1 = time.perf_counter()
            fwd.wake()
            while r.id not in acks:
                acked.clear()
                await asyncio.wait_for(acked.wait(), 10)
            from_append.append((acks[r.id] - t0) * 1000)
            from_commit.append((acks[r.id] - t1) * 1000)
            delay = start + (i + 1) * interval - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    return from_append, from_commit


def pct(xs: list[float], p: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, round(p / 100 * (len(s) - 1)))]


def run(n: int, latency_s: float, repeat: int = 3) -> None:
    configure_logging(level="error", stream=sys.stderr)
    with tempfile.TemporaryDirectory(prefix="edge-uplink-bench-") as tmp:
        tmpdir = Path(tmp)
        tpki: TestPki = make_pki(tmpdir, "hub-bench", hostile=())
        broker = start_broker(tmpdir, tpki, debug=False)
        try:
            cfg = tpki.uplink_config(broker.port)
            key = os.urandom(32)
            hub = tpki.hub_id
            clinic = ec.generate_private_key(ec.SECP256R1())
            sealer = SealingEncoder(hub, load_signer(cfg), clinic.public_key())
            us, plain_size, sealed_size = seal_cost(sealer, hub, cfg.batch_max_readings, 400)
            emit("uplink.e2e_us_per_bundle", us, "us", readings_per_bundle=cfg.batch_max_readings,
                 bundle_bytes=plain_size, sealed_bytes=sealed_size)
            zipped = dataclasses.replace(sealer, compress=True)
            us, plain_size, sealed_size = seal_cost(zipped, hub, cfg.batch_max_readings, 400)
            emit("uplink.e2e_compressed_us_per_bundle", us, "us", zip="DEF",
                 readings_per_bundle=cfg.batch_max_readings, bundle_bytes=plain_size,
                 sealed_bytes=sealed_size)
            drains: list[float] = []
            plains: list[float] = []
            raws: list[float] = []
            # Interleaved repetitions; the median is reported, every run is listed.
            for i in range(repeat):
                drains.append(asyncio.run(
                    drain(cfg, hub, tmpdir / f"drain{i}" / "vault.db", key, n, sealer)))
                plains.append(
                    asyncio.run(drain(cfg, hub, tmpdir / f"plain{i}" / "vault.db", key, n))
                )
                (tmpdir / f"raw{i}").mkdir()
                raws.append(raw_pipeline(cfg, hub, tmpdir / f"raw{i}" / "raw.db", key, n))
            drain_rate, raw_rate = statistics.median(drains), statistics.median(raws)
            plain_rate = statistics.median(plains)
            common = {
                "readings": n, "batch_max_readings": cfg.batch_max_readings,
                "inflight_window": cfg.inflight_window, "runs": len(drains),
            }
            emit("uplink.drain_per_s", plain_rate, "readings/s", e2e="off", **common,
                 each=[round(x) for x in plains])
            emit("uplink.drain_e2e_per_s", drain_rate, "readings/s", e2e="sign+encrypt",
                 **common, each=[round(x) for x in drains])
            emit("uplink.raw_pipeline_per_s", raw_rate, "readings/s", **common,
                 each=[round(x) for x in raws])
            emit("uplink.drain_over_raw", drain_rate / raw_rate, "ratio", e2e="sign+encrypt",
                 each=[round(d / r, 3) for d, r in zip(drains, raws, strict=True)])
            emit("uplink.drain_plain_over_raw", plain_rate / raw_rate, "ratio", e2e="off",
                 each=[round(d / r, 3) for d, r in zip(plains, raws, strict=True)])

            lat_readings = make_readings(int(50 * latency_s) + 1, PATIENTS, start=n)
            from_append, from_commit = asyncio.run(
                latency(cfg, hub, tmpdir / "lat" / "vault.db", key, lat_readings, 50.0,
                        latency_s)
            )
            info = {"samples": len(from_append), "rate_hz": 50}
            emit("uplink.latency_p50_ms", statistics.median(from_append), "ms", **info)
            emit("uplink.latency_p99_ms", pct(from_append, 99), "ms", **info)
            emit("uplink.latency_after_commit_p99_ms", pct(from_commit, 99), "ms", **info)
        finally:
            broker.stop()


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point for ``python -m bench`` (auto-discovered) and direct runs."""
    ap = argparse.ArgumentParser(prog="bench.uplink_bench")
    ap.add_argument("--readings", type=int, default=200_000)
    ap.add_argument("--latency-seconds", type=float, default=20.0)
    ap.add_argument("--repeat", type=int, default=3, help="drain/raw runs (median reported)")
    args = ap.parse_args(argv)
    run(args.readings, args.latency_seconds, args.repeat)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
