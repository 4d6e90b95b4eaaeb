"""``python -m facefoundry.flows.cli``: the same as the ``facefoundry`` console script."""

import sys

from facefoundry.flows.cli import main

sys.exit(main())
