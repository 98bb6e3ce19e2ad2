"""``deepspeed --module dnalm.train --config …``: the same entry as launch/train.py, for installed copies."""

import sys

from dnalm.train import main

sys.exit(main())
