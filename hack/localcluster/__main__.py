"""``python -m localcluster`` (what hack/cluster runs)."""

import sys

from .cli import main

sys.exit(main())
