"""What every benchmark result carries: the machine it ran on and where it was written."""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path

from dnalm.utils.devices import dtype_name  # noqa: F401 (the benches name dtypes through report)

DATA_ENV = "DNALM_DATA"  # a folder laid out as genomes/hs37_chr20.fa.gz, gue/TASK/{train,dev}.csv
CHR20 = "genomes/hs37_chr20.fa.gz"
GUE = "gue"


def data_file(relative: str) -> Path | None:
    """``relative`` under ``$DNALM_DATA`` when that is set and holds it; None otherwise (no path is assumed)."""
    base = os.environ.get(DATA_ENV)
    path = Path(base) / relative if base else None
    return path if path is not None and path.exists() else None


def chr20_or_bundled() -> Path:
    """Human chr20 from ``$DNALM_DATA`` where it is, else the bundled E. coli genome."""
    from dnalm import genome

    return data_file(CHR20) or genome.DEFAULT_GENOME


def required_data(given: Path | str | None, relative: str, flag: str) -> Path:
    """``given``, else ``relative`` under ``$DNALM_DATA``; refused in one line naming the flag when neither is there."""
    from dnalm.utils.errors import DnalmError

    if given is not None:
        return Path(given)
    found = data_file(relative)
    if found is None:
        where = (
            f"${DATA_ENV} ({os.environ[DATA_ENV]}) has no {relative}"
            if os.environ.get(DATA_ENV)
            else f"${DATA_ENV} is not set"
        )
        raise DnalmError(
            f"{flag} not given and {where}: give {flag} PATH, or set {DATA_ENV} to a folder holding {relative}"
        )
    return found


def machine() -> dict:
    import numpy

    from dnalm.utils.devices import cpu_name

    return {
        "cpu": cpu_name(),
        "cores_available": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "python": platform.python_version(),
        "numpy": numpy.__version__,
        "platform": platform.platform(),
        "date": time.strftime("%Y-%m-%d"),
    }


def header(benchmark: str, command: str, device) -> dict:
    """What every device-aware result starts with: its name, the command, the machine, the device and the dtype."""
    from dnalm.utils.devices import describe, training_dtype

    return {
        "benchmark": benchmark,
        "command": command,
        "machine": machine(),
        "device": describe(device),
        "dtype": dtype_name(training_dtype(device)),
    }


def device_label(result: dict) -> str:
    """The measured device and precision for a plot title: e.g. 'NVIDIA H100 80GB HBM3, bf16' or '<cpu model>, 2
    threads, fp32'."""
    device = result["device"]
    threads = f", {device['threads']} threads" if device["type"] == "cpu" else ""
    return f"{device['name']}{threads}, {result['dtype']}"


def write(result: dict, out_dir: Path, name: str) -> Path:
    """Write ``name.json`` atomically and return its path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{name}.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(result, indent=2) + "\n")
    tmp.replace(path)
    return path


def save_plot(figure, out_dir: Path, name: str) -> Path:
    from dnalm.utils.plots import save

    return save(figure, out_dir / f"{name}.png")
