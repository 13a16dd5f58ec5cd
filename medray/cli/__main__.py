"""`python -m medray.cli …`, the same as the `medray` script."""

import sys

from medray.cli import main

sys.exit(main())
