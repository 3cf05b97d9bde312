"""``python -m toolkit``: the ``toolkit`` command (:mod:`toolkit.cli`)."""

import sys

from toolkit.cli import main

sys.exit(main())
