"""``python -m reprsim demo`` runs the same command line as ``reprsim demo``."""

import sys

from .cli import main

sys.exit(main())
