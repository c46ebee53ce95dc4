"""Pure GATT codecs: bytes in, typed values out (and bytes out for what the gateway writes).

Nothing in this package does I/O or reads a clock. Every decoder raises
:class:`edge.errors.MalformedPayload` for any input that does not follow its characteristic's
specification; no other exception escapes a decoder.
"""
