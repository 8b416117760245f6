"""The target side of predict mode: what runs on the device a lookup table describes.

Only numpy, onnx, onnxruntime and the standard library are imported here (no torch, no pydantic, nothing of
``autocompress.compress`` or the zoo), so an edge box with just those can build a table::

    pip install --no-deps autocompress && pip install numpy onnx onnxruntime pyyaml
    python -m autocompress.profiling --profile cpu-1thread --out my-box.table.jsonl

* :mod:`.target`: session settings from a profile, sessions, block timing, the machine's fingerprint;
* :mod:`.graphs`: single-op and small fused-pattern ONNX graphs (``onnx.helper``);
* :mod:`.kernels`: the kernels ORT runs for a model after graph optimisation, keyed for the table;
* :mod:`.table`: the grid, the resumable JSON Lines table, fusion rules, compatibility checks;
* :mod:`.cold`: weighted kernels with their weights out of the cache: the knee and its steps (a core's own cache,
  the last level), the cold timings' copies, a network's cache fitted on networks timed whole, the blends;
* :mod:`.marks`: the device's speed marked between the grid's phases, each graph rescaled to the build's median speed;
* :mod:`.nets`, :mod:`.lookup`, :mod:`.check`: generated networks, the prediction, ``--check``.
"""

from .kernels import list_kernels
from .table import build, check_compatible, fusion_rules, read
from .target import Target, TargetError, fingerprint

__all__ = ["Target", "TargetError", "build", "check_compatible", "fingerprint", "fusion_rules", "list_kernels", "read"]
