"""``python -m ood_core``: see :mod:`ood_core.cli`."""

from ood_core.cli import main

raise SystemExit(main())
