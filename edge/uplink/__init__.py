"""The secure uplink: TLS with SPKI pinning, the asyncio MQTT shell, the pure batching policy
and the forwarder shell.

- :mod:`edge.uplink.ports` — the typed seams: ``MqttLink``, ``Connector``, ``Will``,
  ``LinkInfo``, ``PublishRefused``, ``Outbox``, ``Encoder``, ``StatusProvider``.
- :mod:`edge.uplink.tls` — ``build_context(UplinkConfig)`` (private CA only, hostname check,
  client certificate, TLS floor, AEAD-only 1.2), ``open_tls`` (connect + handshake + pin check
  in a worker thread; TCP_NODELAY), ssl error -> stable reason words.
- :mod:`edge.uplink.pins` — ``spki_pin(cert)``, ``PinVerifier`` (leaf or issuing-CA pin).
- :mod:`edge.uplink.mqtt` — ``connect_link`` / ``TlsMqttConnector`` (the production
  connector), ``PahoLink.publish(...) -> Future`` resolved by the PUBACK.
- :mod:`edge.uplink.pinned_client` — ``PinnedClient``: paho on the already-verified TLS socket.
- :mod:`edge.uplink.topics` — topic names, the status documents, ``TopicRouter``.
- :mod:`edge.uplink.batching` — the pure policy: packing, read cursor, window, ack deadlines.
- :mod:`edge.uplink.stats` — ``ForwarderState``, ``ForwarderStats``.
- :mod:`edge.uplink.forwarder` — ``Forwarder(config, hub_id, outbox, connector=, clock=,
  consent=, ...)``: ``run()``, ``wake()``, ``begin_drain()``, ``state``, ``stats()``.
- :mod:`edge.uplink.status_publisher` — the retained status document, its interval and Will.
- :mod:`edge.uplink.fhir_encoding` — the plain FHIR encoder and its content type.
- :mod:`edge.uplink.probe` — ``probe(config, hub_id)`` behind ``edge uplink probe``.
- :mod:`edge.uplink.pki` — the development PKI behind ``edge pki dev|csr``.
- :mod:`edge.uplink.envelope` — the end-to-end JWE(JWS(Bundle)) envelope.

Fakes of the seams ship in :mod:`edge.testing.uplink`; the development broker and the hostile
test certificates live in ``devtools`` (not installed on a hub).
"""
