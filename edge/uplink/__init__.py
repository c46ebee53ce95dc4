"""The secure uplink: TLS with SPKI pinning, the asyncio MQTT shell and the forwarder."""
