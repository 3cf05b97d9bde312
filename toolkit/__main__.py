"""``python -m toolkit``: the ``toolkit`` command (:mod:`toolkit.cli`).

Layer: front doors.
"""

import sys

from toolkit.cli import main

sys.exit(main())
