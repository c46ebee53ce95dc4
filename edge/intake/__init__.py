"""The gate between BLE and the vault: plausibility, the one consent gate, minimisation."""

from edge.intake.consent import ConsentCheck, ConsentGate, ConsentStore
from edge.intake.gate import Intake

__all__ = ["ConsentCheck", "ConsentGate", "ConsentStore", "Intake"]
