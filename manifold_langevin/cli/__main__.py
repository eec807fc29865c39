"""``python -m manifold_langevin.cli``: the same as the ``manifold-langevin`` script."""

import sys

from . import main

sys.exit(main())
