"""``python -m flipserve``: the same as the ``flipserve`` console script."""

from flipserve.cli import main

raise SystemExit(main())
