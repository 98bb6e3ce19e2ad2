"""Module names from before 0.2 gave each role its package: importable for one more release, with a
DeprecationWarning that names the new place (``import dnalm.finetune`` is ``dnalm.eval.finetune``)."""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
import warnings

MOVED = {
    "dnalm.errors": "dnalm.utils.errors",
    "dnalm.files": "dnalm.utils.files",
    "dnalm.faults": "dnalm.utils.faults",
    "dnalm.devices": "dnalm.utils.devices",
    "dnalm.device_names": "dnalm.utils.device_names",
    "dnalm.memory": "dnalm.utils.memory",
    "dnalm.plots": "dnalm.utils.plots",
    "dnalm.finetune": "dnalm.eval.finetune",
    "dnalm.eval_gue": "dnalm.eval.gue",
    "dnalm.eval_context": "dnalm.eval.context",
    "dnalm.embedding": "dnalm.use.embedding",
    "dnalm.variants": "dnalm.use.variants",
    "dnalm.generate": "dnalm.use.generate",
    "dnalm.sequences": "dnalm.use.sequences",
    "dnalm.bench.compare": "dnalm.studies.compare",
    "dnalm.bench.compare_report": "dnalm.studies.compare_report",
    "dnalm.bench.mfu": "dnalm.train.flops",
}


class _MovedModules(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, name, path=None, target=None):
        return importlib.util.spec_from_loader(name, self) if name in MOVED else None

    def create_module(self, spec):
        warnings.warn(
            f"{spec.name} moved to {MOVED[spec.name]}; the old name goes in the next release",
            DeprecationWarning,
            stacklevel=2,
        )
        return importlib.import_module(MOVED[spec.name])

    def exec_module(self, module) -> None:
        pass  # the module under its new name is already whole


def install() -> None:
    if not any(isinstance(finder, _MovedModules) for finder in sys.meta_path):
        sys.meta_path.insert(0, _MovedModules())
