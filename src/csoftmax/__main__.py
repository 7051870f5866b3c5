"""`python -m csoftmax`: the command line of csoftmax._cli (info, check, bench)."""
import sys

from ._cli import main

sys.exit(main())
