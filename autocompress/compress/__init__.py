"""Compression stages: prune.py, depth.py (dropped blocks), channels.py, criteria.py, students.py, distill.py,
export.py, quantize.py.

This package is also callable as ``autocompress.compress(...)``, the one-call Python API (the package
and the function share the name; see autocompress/__init__.py).
"""

import sys
import types


class _CallableModule(types.ModuleType):
    def __call__(self, *args, **kwargs):
        from .. import _compress

        return _compress(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
