import sys

from pysmpc.cli import main

sys.exit(main())
