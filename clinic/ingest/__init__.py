"""Ingest: shared-subscription MQTT → open and verify envelopes → PostgreSQL → PUBACK."""
