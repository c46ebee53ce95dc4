"""Attaching the encrypted side log to an open vault: at open, the one process that can take
the log replays it into the database (a torn tail dropped) and stages from then on; at close,
what is held is merged and the log released. A process that cannot take the log writes
through, each append its own durable transaction."""

from __future__ import annotations

from edge.errors import VaultError
from edge.log import get_logger
from edge.vault.engine import Engine
from edge.vault.merge import top_seq, watermarks
from edge.vault.sidelog import SideLog, log_path
from edge.vault.staging import Staging

log = get_logger("edge.vault")


def attach(db: Engine, vault_key: bytes) -> bool:
    """Take the side log if no other process has it: replay it into the database (a torn
    tail dropped), empty it, and stage from now on. False: another process owns it (this one
    writes through, each append its own durable transaction)."""
    if db.staging is not None:
        return True
    if db.config.flush_interval_s <= 0:
        return False
    sidelog = SideLog.acquire(log_path(db.config.path), vault_key)
    if sidelog is None:
        return False
    try:
        entries = sidelog.replay()
        with db.errors():
            top = top_seq(db.conn)
        staging = Staging(sidelog, top + 1, db.clock.monotonic())
        n = staging.load(db, entries)
        db.staging = staging
        if n:
            staging.merge(db)
            log.info("vault.sidelog_replayed", readings=n)
        else:
            sidelog.reset()
            db.reload_counters()  # another process may have written meanwhile
            with db.errors():
                staging.db_max_ident, staging.db_pending_top = watermarks(db.conn)
    except BaseException:
        db.staging = None
        sidelog.close()
        raise
    return True


def detach(db: Engine) -> None:
    """Stop staging: merge what is held (if that fails, it stays safe in the synced log for
    the next open) and release the log."""
    staging = db.staging
    if staging is None:
        return
    try:
        staging.merge(db)
    except VaultError as exc:
        log.warning("vault.unmerged_at_close", error=type(exc).__name__, held=staging.held())
        try:
            staging.log.sync()
        except VaultError:
            log.error("vault.sidelog_unsynced_at_close")
    finally:
        db.staging = None
        staging.log.close()
