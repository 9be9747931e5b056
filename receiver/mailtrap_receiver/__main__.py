"""``python -m mailtrap_receiver``: the same command line as ``mailtrap-receiver``."""

import sys

from .cli import main

sys.exit(main())
