"""``python -m agent`` runs the panostage command."""

import sys

from agent.cli import main

sys.exit(main())
