"""Benchmarks: ``python -m bench [NAME ...]`` runs every ``bench/<name>_bench.py`` module's
``main()`` (or only the named ones). Each prints one JSON object per figure per line:
``{"figure": "<group>.<name>", "value": <number>, "unit": "<unit>", ...context}``.
Benchmarks are kept apart from the tests; nothing asserts on their figures."""
