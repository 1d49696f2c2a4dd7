"""``python -m agent.host``: the ``msixlab`` command (agent/host/cli.py)."""

import sys

from agent.host.cli import main

sys.exit(main())
