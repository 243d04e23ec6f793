"""``python -m onceflow``: the same as the ``onceflow`` command."""

import sys

from onceflow.engine.cli import main

sys.exit(main())
