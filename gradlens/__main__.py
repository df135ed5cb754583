"""``python -m gradlens`` runs the command line."""

import sys

from gradlens.cli import main

sys.exit(main())
