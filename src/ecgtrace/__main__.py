import sys

from ecgtrace.cli import main

sys.exit(main())
