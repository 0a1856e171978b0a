"""`python -m localqueue {stats,peek,dump,deadletter}`: see `localqueue.cli`."""

import sys

from localqueue.cli import main

sys.exit(main())
