"""Moved to ``dnalm.train.flops`` (the trainer logs MFU, and nothing below the benches imports them); this name
stays for one release."""

import warnings

from dnalm.train.flops import NOMINAL, SOURCE, Peak, device_peak, flops_per_token, nominal_peak  # noqa: F401

warnings.warn("dnalm.bench.mfu moved to dnalm.train.flops; this alias goes in the next release", DeprecationWarning,
              stacklevel=2)
