"""``python -m reprsim ...`` runs the same command line as ``reprsim ...``."""

import sys

from .cli import main

sys.exit(main())
