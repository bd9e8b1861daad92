"""``python -m optiserve`` is the ``optiserve`` command."""

from optiserve.cli import main

raise SystemExit(main())
