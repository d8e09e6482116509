"""`python -m guestfeed_server.cli`: the `guestfeed` command."""

import sys

from . import main

sys.exit(main())
