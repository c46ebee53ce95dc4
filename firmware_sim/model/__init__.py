"""The transport-agnostic model: the Peripheral contract (``contract``), the simulator's manual
clock (``clock``; the protocol and real clock are :mod:`edge.clock`'s) and a recording event
sink for tests (``recorder``). Devices live in ``firmware_sim.devices``, fleets in
``firmware_sim.fleet``."""
