"""``clinic ingest``: one worker. Take a batch from the subscription, judge each message
(:mod:`clinic.ingest.verify`), commit the batch (:mod:`clinic.ingest.sink`), then PUBACK it.

A crash at any instant loses nothing: whatever was not acknowledged is re-sent by the broker
to the same client id (persistent session), and the unique identifier absorbs what was
committed but not yet acknowledged. PostgreSQL down: the batch is kept, unacknowledged, and
retried until it commits. Nothing a hub sends can crash the loop: every failure of a message
is a counted, quarantined rejection.
"""

from __future__ import annotations

import datetime as dt
import gc
import queue
import threading
from collections.abc import Callable
from pathlib import Path

from cryptography import x509
from paho.mqtt.subscribeoptions import SubscribeOptions

from clinic.alerts.evaluator import run_periodically
from clinic.alerts.rules import Thresholds
from clinic.config import ClinicConfig, ingest_identity
from clinic.db.connect import Conn, connect
from clinic.errors import ClinicError, Rejected, StoreUnavailable
from clinic.ingest.mqtt import BrokerUnavailable, Filter, Message, Subscription
from clinic.ingest.sink import Judged, Lookups, Outcome, commit_batch
from clinic.ingest.verify import Verifier, parse_status, parse_topic
from clinic.keys import KeyRing
from edge.backoff import Backoff, BackoffPolicy
from edge.log import get_logger

log = get_logger("clinic.ingest")

Clock = Callable[[], dt.datetime]
#: the cyclic collector's first threshold while a worker runs (Python's default is 700)
GC_GEN0_THRESHOLD = 20_000


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def load_hub_cas(path: Path) -> list[x509.Certificate]:
    """The hub CA certificates; ClinicError when unreadable."""
    try:
        return x509.load_pem_x509_certificates(path.read_bytes())
    except (OSError, ValueError) as exc:
        raise ClinicError("hubs.ca_file is not a readable PEM certificate file") from exc


def client_id(cfg: ClinicConfig, worker: str) -> str:
    """The worker's MQTT client id: its certificate's CN (the broker enforces that)."""
    return ingest_identity(cfg, worker)


def topics(cfg: ClinicConfig) -> list[Filter]:
    b = cfg.broker
    return [
        # Retain handling 2: a retained Bundle is never replayed at each (re)subscription
        # (mosquitto sends retained messages to shared subscriptions); live ones still come.
        (f"$share/{b.share_group}/{b.topic_prefix}/+/obs/+",
         SubscribeOptions(qos=1, retainHandling=SubscribeOptions.RETAIN_DO_NOT_SEND)),
        # Status documents are few and idempotent: every worker reads them all (no $share),
        # the retained one (the hub's last word, or its Will) included.
        (f"{b.topic_prefix}/+/status", SubscribeOptions(qos=1)),
    ]


def judge(verifier: Verifier, lookups: Lookups, msg: Message, now: dt.datetime) -> Outcome:
    """What one message means; never raises for anything the sender controls."""
    try:
        t = parse_topic(msg.topic, verifier.prefix)
        if t.kind == "status":
            return parse_status(t, msg.payload, now)
        return verifier.observations(msg.topic, msg.payload, now=now,
                                     hub_state=lookups.hub_state,
                                     patient_hub=lookups.patient_hub)
    except Rejected as exc:
        return exc
    except StoreUnavailable:
        raise
    except Exception as exc:  # a bug or a library surprise: still a counted rejection
        log.error("ingest.unexpected", error=type(exc).__name__)
        return Rejected("internal_error", "message could not be judged")


class Worker:
    """One ingest worker; :meth:`run` until :meth:`stop`."""

    def __init__(self, cfg: ClinicConfig, ring: KeyRing, name: str = "1", *,
                 clock: Clock = utcnow) -> None:
        self.cfg = cfg
        self.name = name
        self.ring = ring
        self._clock = clock
        self._verifier = Verifier(cfg.broker.topic_prefix, ring, load_hub_cas(cfg.hubs.ca_file),
                                  cfg.ingest.max_message_bytes)
        self._stop = threading.Event()
        self._inbox: queue.Queue[Message] = queue.Queue(maxsize=2 * cfg.broker.receive_maximum)
        self._conn: Conn | None = None
        self._thresholds = Thresholds.from_config(cfg.alerts)

    def stop(self) -> None:
        self._stop.set()

    def run(self) -> None:
        # Judging a message allocates thousands of containers (its parsed Bundle), nearly
        # all freed by reference counting; at the default threshold the cyclic collector ran
        # every few messages and walked every long-lived object of the process. What start-up
        # built is frozen out of its reach, and it runs a thirtieth as often.
        gc.freeze()
        gc.set_threshold(GC_GEN0_THRESHOLD, 10, 10)
        # The periodic evaluator: every worker runs one; an advisory lock lets one at a time
        # evaluate, so the work is done once whichever workers are alive.
        evaluator = threading.Thread(target=run_periodically,
                                     args=(self.cfg, self._stop, self._clock),
                                     name="alerts-evaluator", daemon=True)
        evaluator.start()
        try:
            self._run()
        finally:
            self._stop.set()
            evaluator.join(30)

    def _run(self) -> None:
        b = self.cfg.broker
        backoff = Backoff(BackoffPolicy(base=b.reconnect_base_s,
                                        cap=max(b.reconnect_cap_s, b.reconnect_base_s)))
        while not self._stop.is_set():
            self._drain()
            sub = Subscription(self.cfg.broker, client_id(self.cfg, self.name), topics(self.cfg),
                               self._inbox, identity=self.cfg.broker.identity_files(self.name))
            try:
                sub.open()
            except BrokerUnavailable as exc:
                delay = backoff.next_delay()
                log.warning("ingest.broker_unavailable", reason=exc.reason, retry_in_s=delay)
                self._stop.wait(delay)
                continue
            backoff.reset()
            log.info("ingest.connected", worker=self.name, generation=sub.generation)
            try:
                self._serve(sub)
            finally:
                sub.close()
            if not self._stop.is_set():
                log.warning("ingest.disconnected", reason=sub.close_reason)
        if self._conn is not None:
            self._conn.close()

    def _drain(self) -> None:
        """Forget messages of dead connections (the broker re-sends them on the next one):
        left in the inbox they could fill it before the new connection's SUBACK arrives."""
        while True:
            try:
                self._inbox.get_nowait()
            except queue.Empty:
                return

    def _serve(self, sub: Subscription) -> None:
        while not self._stop.is_set() and not sub.closed.is_set():
            batch = self._take(sub)
            if batch:
                self._commit(sub, batch)

    def _take(self, sub: Subscription) -> list[Message]:
        try:
            first = self._inbox.get(timeout=0.2)
        except queue.Empty:
            return []
        batch = [first]
        while len(batch) < self.cfg.broker.batch_max:
            try:
                batch.append(self._inbox.get_nowait())
            except queue.Empty:
                break
        # Messages of a dead connection are re-sent on this one: skip them here.
        return [m for m in batch if m.generation == sub.generation]

    def _db(self) -> Conn:
        if self._conn is None or self._conn.closed:
            self._conn = connect(self.cfg.db.dsn)
        return self._conn

    def _commit(self, sub: Subscription, batch: list[Message]) -> None:
        while True:
            try:
                conn = self._db()
                now = self._clock()
                lookups = Lookups(conn)
                judged = [Judged(m.topic, m.payload, judge(self._verifier, lookups, m, now))
                          for m in batch]
                result = commit_batch(conn, self.ring, self.name, judged, now,
                                      max_quarantine_bytes=self.cfg.ingest.max_message_bytes,
                                      thresholds=self._thresholds)
                break
            except StoreUnavailable as exc:
                log.warning("ingest.store_unavailable", error=str(exc),
                            retry_in_s=self.cfg.db.retry_s)
                if self._conn is not None:
                    self._conn.close()
                    self._conn = None
                if self._stop.wait(self.cfg.db.retry_s) or sub.closed.is_set():
                    return  # not acknowledged: the broker re-sends
        # Only now, with everything committed, may the broker forget these messages.
        for m in batch:
            sub.ack(m)
        for reason, n in result.rejected.items():
            log.warning("ingest.rejected", reason=reason, count=n)
        if result.stored or result.duplicates:
            log.debug("ingest.committed", stored=result.stored, duplicates=result.duplicates)
        if result.alert_changes:
            log.info("ingest.alerts", changes=result.alert_changes)
