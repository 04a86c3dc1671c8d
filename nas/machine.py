"""The machine a measurement runs on (`nas.results.MachineInfo`), read once per process.

Latency and memory depend on the CPU (model, cores, instruction-set flags such as AVX-512 VNNI
that int8 kernels use) and on the runtime's version, so every measurement records them: the
store, the pages and ``nas retime`` then never compare numbers from different machines
without saying so. Read from ``/proc/cpuinfo`` where there is one, `platform` otherwise.
"""

from __future__ import annotations

import functools
import os
import platform
import socket
from pathlib import Path

from nas.results import MachineInfo


def _cpuinfo() -> dict[str, str]:
    """The first processor's ``key: value`` lines of /proc/cpuinfo; {} where there is none."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return {}
    info: dict[str, str] = {}
    for line in text.splitlines():
        if not line.strip():
            if info:
                break  # the first processor is enough: the rest repeat it
            continue
        key, _, value = line.partition(":")
        info.setdefault(key.strip(), value.strip())
    return info


def _cores() -> int:
    """Cores this process may run on (a container's or cgroup's share, not the host's)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


@functools.cache
def local_machine() -> MachineInfo:
    """This host, as a measurement taken here records it (cached: it does not change)."""
    import onnxruntime

    try:
        import onnx

        onnx_version = onnx.__version__
    except ImportError:  # measuring needs only onnxruntime
        onnx_version = ""
    info = _cpuinfo()
    model = info.get("model name") or info.get("Model") or platform.processor() or platform.machine()
    flags = (info.get("flags") or info.get("Features") or "").split()
    return MachineInfo(cpu_model=model, cores=_cores(), flags=tuple(sorted(set(flags))),
                       onnxruntime=onnxruntime.__version__, onnx=onnx_version,
                       hostname=socket.gethostname())
