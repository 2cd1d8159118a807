"""`python -m iotfsm` works like the `iotfsm` command."""

import sys

from .cli import main

sys.exit(main())
