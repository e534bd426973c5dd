"""Counting the operations that make the host wait for an accelerator.

A GPU runs the kernels the host queues; the host runs ahead, queueing the next ones, until an
operation needs a value from the device: ``.item()``, ``int(t)``, ``float(t)``, ``bool(t)``
(``aten::_local_scalar_dense``), an operation whose output size depends on the data
(``nonzero``, ``masked_select``, boolean-mask indexing, ``repeat_interleave`` without an output
size, ``unique``) or one that copies lengths to the host (``_ctc_loss`` with tensor lengths).
Then the host waits until everything queued before has run, and the device idles while the
host queues the next kernels. For small models the two times add up instead of overlapping.

``HostSyncCounter`` counts these operations with a ``TorchDispatchMode`` on any device, the
CPU included, so a test or a benchmark on a machine without a GPU can tell how often a training
step would wait. It is a lower bound: copies to the host (``.cpu()``, ``.tolist()``,
``.numpy()``) and blocking host-to-device copies of pageable memory are not seen on a CPU.
"""

from __future__ import annotations

import collections
import traceback

import torch
from torch.utils._python_dispatch import TorchDispatchMode

__all__ = ["HostSyncCounter", "SYNC_OPS"]

# aten operator names (without overload) that wait for the device when their inputs live on one
SYNC_OPS = frozenset({"_local_scalar_dense", "nonzero", "masked_select", "_ctc_loss", "repeat_interleave",
                      "_unique2", "unique_dim", "unique_consecutive"})


class HostSyncCounter(TorchDispatchMode):
    """Context manager counting host-waiting operations, by operator and call site.

    ``counter.total`` is the number seen; ``counter.sites`` maps (operator, "file:line") to a
    count, the call site being the innermost frame outside torch itself. ``repeat_interleave``
    counts only without ``output_size``; boolean-mask indexing counts as ``index_bool``. Reads
    made by ``torch.storage`` (the bytes of a storage, as when a file is read into tensors) are
    host memory in every run and are not counted.
    """

    def __init__(self) -> None:
        super().__init__()
        self.sites: collections.Counter = collections.Counter()

    @property
    def total(self) -> int:
        return sum(self.sites.values())

    def by_operator(self) -> dict[str, int]:
        out: collections.Counter = collections.Counter()
        for (op, _), n in self.sites.items():
            out[op] += n
        return dict(out)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = func._schema.name.split("::")[-1]
        counted = None
        if name in SYNC_OPS:
            if not (name == "repeat_interleave" and kwargs.get("output_size") is not None):
                counted = name
        elif name in ("index", "index_put", "index_put_") and len(args) > 1:
            if any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in args[1] if i is not None):
                counted = "index_bool"
        if counted is not None:
            site = _call_site()
            if site is not None:
                self.sites[(counted, site)] += 1
        return func(*args, **kwargs)


def _call_site() -> str | None:
    """The innermost frame outside torch and this module as "file:line"; None for storage reads."""
    for frame in reversed(traceback.extract_stack()):
        path = frame.filename.replace("\\", "/")
        if path.endswith("/torch/storage.py"):
            return None
        if "/torch/" not in path and not path.endswith("kd/training/syncs.py"):
            return f"{path.split('site-packages/')[-1]}:{frame.lineno}"
    return "?"
