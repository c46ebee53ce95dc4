"""edge: a home-care hub gateway for BLE medical devices."""

__version__ = "0.1.0"
