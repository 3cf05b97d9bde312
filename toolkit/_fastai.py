"""Importing fastai without its warnings about torch APIs that fastai itself uses.

Layer: formats, I/O and runtime.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def quiet_import() -> Iterator[None]:
    """fastai 2.8 decorates functions with ``torch.jit.script``, which torch 2.14 deprecates, and
    sets a pandas option that pandas 3 deprecates; neither warning says anything a user of this
    toolkit can act on."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*torch.jit.script.*", category=FutureWarning)
        warnings.filterwarnings("ignore", message=".*mode.chained_assignment.*")
        yield
