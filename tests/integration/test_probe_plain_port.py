"""`edge uplink probe` against a port that does not speak TLS (issue 10): a plain MQTT
listener answers the TLS hello with MQTT bytes or hangs up. The probe says the port does not
speak TLS — not "unreachable (Connection reset by peer)". Loopback listeners only."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from edge.uplink.probe import probe, speaks_tls
from tests.support.mosquitto import free_port
from tests.support.pki import TestPki, make_pki

pytestmark = pytest.mark.integration

Answer = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def _connack(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await reader.read(1024)  # the TLS hello, taken for an MQTT packet
    writer.write(b"\x20\x02\x00\x02")  # CONNACK: refused, unacceptable protocol version
    await writer.drain()
    writer.close()


async def _hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await reader.read(1024)  # what mosquitto does with a malformed CONNECT
    writer.close()


@asynccontextmanager
async def _listener(answer: Answer) -> AsyncIterator[int]:
    server = await asyncio.start_server(answer, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        await server.wait_closed()


@pytest.fixture(scope="module")
def tpki(tmp_path_factory: pytest.TempPathFactory) -> TestPki:
    return make_pki(tmp_path_factory.mktemp("plain"), "hub-1", hostile=())


@pytest.mark.parametrize("answer", [_connack, _hang_up], ids=["answers-mqtt", "hangs-up"])
async def test_a_plain_mqtt_port_is_named_as_not_speaking_tls(
    tpki: TestPki, answer: Answer
) -> None:
    async with _listener(answer) as port:
        assert await speaks_tls("127.0.0.1", port, 5.0) is False
        result = await probe(tpki.uplink_config(port), tpki.hub_id, step_timeout=5)
    assert not result.ok
    # Before: "unreachable (Connection reset by peer)" or a TLS version problem.
    assert result.reason == "not_tls" and result.exit_code == 2
    text = "\n".join(result.lines())
    assert f"port {port} does not speak TLS" in text
    assert "uplink.port" in text and "8883" in text


async def test_an_unreachable_port_is_still_unreachable(tpki: TestPki, tmp_path: Path) -> None:
    port = free_port()
    assert await speaks_tls("127.0.0.1", port, 2.0) is None
    result = await probe(tpki.uplink_config(port), tpki.hub_id, step_timeout=2)
    assert result.reason == "unreachable" and result.exit_code == 1


async def test_a_tls_port_speaks_tls(tpki: TestPki) -> None:
    import ssl

    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(tpki.broker.cert, tpki.broker.key)

    async def tls(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.close()

    server = await asyncio.start_server(tls, "127.0.0.1", 0, ssl=ctx)
    try:
        port = server.sockets[0].getsockname()[1]
        assert await speaks_tls("127.0.0.1", port, 5.0) is True
    finally:
        server.close()
        await server.wait_closed()
