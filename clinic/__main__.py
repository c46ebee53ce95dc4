"""``python -m clinic``."""

from clinic.cli import main

raise SystemExit(main())
