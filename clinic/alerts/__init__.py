"""Alerts: pure rules (:mod:`~clinic.alerts.rules`), the store shell (open, resolve,
acknowledge, list, thresholds: :mod:`~clinic.alerts.store`), the rules applied at ingest in the
batch's transaction (:mod:`~clinic.alerts.on_ingest`) and the periodic evaluator, one at a time
across workers (:mod:`~clinic.alerts.evaluator`)."""
