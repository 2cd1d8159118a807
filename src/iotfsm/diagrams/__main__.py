"""`python -m iotfsm.diagrams --all -o docs/diagrams` regenerates the docs' diagrams."""

import sys

from .cli import main

sys.exit(main())
