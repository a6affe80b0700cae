"""``python -m safeload`` runs the CLI."""

import sys

from safeload._cli import main

sys.exit(main())
