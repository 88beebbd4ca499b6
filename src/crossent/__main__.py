"""``python -m crossent`` runs the command line."""

import sys

from crossent.cli import main

sys.exit(main())
