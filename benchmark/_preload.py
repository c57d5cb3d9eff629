"""Imported once by the process pool's fork server (:class:`benchmark.executors.ProcessPoolExecutor`): it loads
every registry (the built-in methods, codecs, backbones and suites, and the entry-point plugins) and each
backbone's :attr:`~benchmark.contract.Backbone.preload_modules` (the model classes it imports lazily). Each run's
child is forked from that server, so it starts with torch and the model code imported instead of paying seconds of
imports per run. Importing them starts no threads, so the fork is safe.

A module that fails to import here is skipped: the run that needs it raises the error itself, where the sweep
reports it."""
import importlib

from benchmark.executors import die_with_parent
from benchmark.registry import BACKBONES, CODECS, METHODS, SUITES

die_with_parent()  # this module runs in the fork server only: it must not outlive the sweep that started it

for _registry in (METHODS, CODECS, SUITES):
    _registry.names()
for _plugin in BACKBONES.plugins():
    for _name in getattr(_plugin.obj, "preload_modules", ()):
        try:
            importlib.import_module(_name)
        except Exception:  # noqa: BLE001 - see the module docstring
            pass
