"""The encrypted vault (SQLCipher): outbox, bindings, consent, sync cursors, audit; keys.

Split by concern: :mod:`~edge.vault.models` (value types), :mod:`~edge.vault.files` (modes,
flock), :mod:`~edge.vault.cipher` (the driver boundary), :mod:`~edge.vault.engine`
(connection, transactions, counters), :mod:`~edge.vault.outbox`, :mod:`~edge.vault.registry`
(bindings, consent, cursors), :mod:`~edge.vault.audit`, :mod:`~edge.vault.maintenance`
(integrity, backup, re-key), :mod:`~edge.vault.keys`, :mod:`~edge.vault.rotation`,
:mod:`~edge.vault.schema`, and :mod:`~edge.vault.vault`, the thin async :class:`Vault`.
"""

from edge.vault.audit import GENESIS_HASH, audit_hash
from edge.vault.keys import KeyProvider, key_provider
from edge.vault.models import (
    AppendResult,
    AuditEntry,
    Binding,
    Consent,
    GlucoseCursor,
    PendingReading,
    VaultStats,
    identity_time_us,
)
from edge.vault.vault import Vault

__all__ = [
    "GENESIS_HASH",
    "AppendResult",
    "AuditEntry",
    "Binding",
    "Consent",
    "GlucoseCursor",
    "KeyProvider",
    "PendingReading",
    "Vault",
    "VaultStats",
    "audit_hash",
    "identity_time_us",
    "key_provider",
]
