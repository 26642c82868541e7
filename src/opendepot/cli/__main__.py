"""`python -m opendepot.cli`: the same as the `opendepot` command (the tests start servers this way)."""

import sys

from opendepot.cli import main

sys.exit(main())
