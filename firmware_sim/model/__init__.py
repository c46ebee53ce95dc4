"""The transport-agnostic model: the Peripheral contract (``contract``), the simulator's clocks
(``clock``: ``SimClock``, ``RealClock``, ``ManualClock``) and a recording event sink for tests
(``recorder``). Devices live in ``firmware_sim.devices``, fleets in ``firmware_sim.fleet``."""
