"""``python -m tiniest <command>``."""

from tiniest.cli import main

raise SystemExit(main())
