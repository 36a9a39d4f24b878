"""``python -m medrecon <command> ...`` (also ``torchrun ... -m medrecon train ...``)."""

import sys

from medrecon.cli import main

sys.exit(main())
