"""``python -m tiniest <command>``."""

from tiniest.commands import main

raise SystemExit(main())
