import sys

from sbridge.cli import main

sys.exit(main())
