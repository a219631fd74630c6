"""`python -m cai` is the `cai` command."""

import sys

from .cli import main

sys.exit(main())
