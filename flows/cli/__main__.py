"""``python -m segflow.flows.cli``."""

import sys

from segflow.flows.cli import main

sys.exit(main())
