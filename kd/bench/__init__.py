"""Benchmarks, the last stage: results go to a JSON file and a markdown table (``kd bench ...``).

- :mod:`kd.bench.analyze`: ``kd bench analysis`` (streamed similarity) and ``kd bench analyze`` (``kd analyze``
  end to end);
- :mod:`kd.bench.speed`: ``kd bench speed``, inference latency and real-time factor;
- :mod:`kd.bench.train`: ``kd bench train``, training throughput, MFU and host waits.
"""

from __future__ import annotations

import os
import platform
import time


def machine_info() -> dict:
    """The machine a benchmark ran on: CPU, core count, torch version, date and GPU (when there is one)."""
    import torch

    info = {"cpu": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
            "torch": torch.__version__, "date": time.strftime("%Y-%m-%d")}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info
