"""The encrypted vault (SQLCipher): outbox, bindings, consent, sync cursors, audit; keys."""

from edge.vault.keys import KeyProvider, key_provider
from edge.vault.store import (
    AppendResult,
    AuditEntry,
    Binding,
    Consent,
    GlucoseCursor,
    PendingReading,
    Vault,
    VaultStats,
)

__all__ = [
    "AppendResult",
    "AuditEntry",
    "Binding",
    "Consent",
    "GlucoseCursor",
    "KeyProvider",
    "PendingReading",
    "Vault",
    "VaultStats",
    "key_provider",
]
