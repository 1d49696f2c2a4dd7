"""``python -m agent.host``: the ``msixlab`` command (agent/host/cli.py)."""

import sys

from .cli import main

sys.exit(main())
