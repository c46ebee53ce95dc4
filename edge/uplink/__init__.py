"""The secure uplink: TLS with SPKI pinning, the asyncio MQTT shell and the forwarder.

- :mod:`edge.uplink.tls` — ``build_context(UplinkConfig)`` (private CA only, hostname check,
  client certificate, TLS floor, AEAD-only 1.2), ``open_tls`` (connect + handshake + pin check
  in a worker thread; TCP_NODELAY), ssl error -> stable reason words.
- :mod:`edge.uplink.pins` — ``spki_pin(cert)``, ``PinVerifier`` (leaf or issuing-CA pin).
- :mod:`edge.uplink.mqtt` — ``connect_link`` / ``TlsMqttConnector`` (the link factory),
  ``MqttLink.publish(...) -> Future`` resolved by the PUBACK; ``PublishRefused``.
- :mod:`edge.uplink.forwarder` — ``Forwarder(config, hub_id, vault, ...)``: ``run()``,
  ``wake()``, ``state``, ``stats()``.
- :mod:`edge.uplink.probe` — ``probe(config, hub_id)`` behind ``edge uplink probe``.
- :mod:`edge.uplink.pki` — the development PKI behind ``edge pki dev|csr``.
"""
