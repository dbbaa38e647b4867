"""``python -m cissl ...``: the same as the ``cissl`` command (useful where the package is not installed)."""

import sys

from cissl.cli import main

sys.exit(main())
