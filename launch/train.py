"""The entry a launcher runs: ``deepspeed [--hostfile H] launch/train.py --config X [key=value ...]``."""

import sys

from dnalm.train import main

if __name__ == "__main__":
    sys.exit(main())
