import sys

from dnalm.cli import main

sys.exit(main())
