"""Memory the big training state needs, checked against what the machine has, before allocating.

The replay buffer (`size x H x W x C` float32), a feature queue (`size x dim` float32) and JEM++'s
class Gaussians (`C x D x D` covariances, D = H * W * C) are allocated whole when a trainer is
built. `check_allocation` is called with their size first: a configuration that cannot fit (a
1e6-image 32x32x3 buffer is 12.3 GB; CIFAR-100's 100 covariances of 3072 x 3072 float64 are 7.5 GB)
fails at once with the number of bytes and what to change, instead of an out-of-memory kill, or a
swapping machine, an hour later.

Available memory: the smallest of `MemAvailable` (/proc/meminfo), the cgroup v2 or v1 limit minus
the current usage (containers, batch schedulers) and `KERAS_EBM_MEMORY_LIMIT` (bytes, or a number
with a KB/MB/GB/KiB/MiB/GiB suffix; set it to reserve memory for other jobs, or "none" to disable
the check). Where none of them is known the check passes. Variables of a distribution strategy
whose replicas are CPU devices are held once per replica in host memory, and are counted so.
"""

from __future__ import annotations

import math
import os
import re

import tensorflow as tf

ENV_LIMIT = "KERAS_EBM_MEMORY_LIMIT"
# Leave room for everything else a step needs (network, activations, the data pipeline).
DEFAULT_FRACTION = 0.8

_UNITS = {
    "": 1,
    "b": 1,
    "kb": 10**3,
    "mb": 10**6,
    "gb": 10**9,
    "tb": 10**12,
    "kib": 2**10,
    "mib": 2**20,
    "gib": 2**30,
    "tib": 2**40,
}


class ResourceError(MemoryError):
    """A configuration whose state would not fit in memory (raised before allocating it)."""


def format_bytes(n: int | float) -> str:
    """`12288000000` -> "12.3 GB (11.4 GiB)"."""
    n = float(n)
    for unit, scale in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            binary = {"TB": "TiB", "GB": "GiB", "MB": "MiB", "kB": "KiB"}[unit]
            bscale = {"TB": 2**40, "GB": 2**30, "MB": 2**20, "kB": 2**10}[unit]
            return f"{n / scale:.1f} {unit} ({n / bscale:.1f} {binary})"
    return f"{int(n)} bytes"


def parse_bytes(text: str | None) -> int | None:
    """ "2GiB", "500 MB", "1e9" -> bytes (int); "none"/"" -> None."""
    text = str(text).strip().lower()
    if text in ("", "none", "off", "0"):
        return None
    match = re.fullmatch(r"([0-9.e+]+)\s*([a-z]*)", text)
    if not match or match.group(2) not in _UNITS:
        raise ValueError(
            f"{ENV_LIMIT} must be a number of bytes with an optional unit (e.g. 8GiB, 500MB) or "
            f"'none'. Received: {text!r}"
        )
    return int(float(match.group(1)) * _UNITS[match.group(2)])


def _meminfo_available():
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _read_int(path):
    try:
        with open(path) as f:
            text = f.read().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def _cgroup_available():
    for limit_path, usage_path in (
        ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),  # cgroup v2
        ("/sys/fs/cgroup/memory/memory.limit_in_bytes", "/sys/fs/cgroup/memory/memory.usage_in_bytes"),
    ):
        limit = _read_int(limit_path)
        if limit is not None and limit < 2**60:  # v1 reports "no limit" as a huge number
            return max(limit - (_read_int(usage_path) or 0), 0)
    return None


def available_memory() -> tuple[int | None, str | None]:
    """(bytes, where that number comes from), or (None, None) when nothing is known or the check
    is disabled (`KERAS_EBM_MEMORY_LIMIT=none`)."""
    if ENV_LIMIT in os.environ:
        limit = parse_bytes(os.environ[ENV_LIMIT])
        return (limit, f"{ENV_LIMIT}={os.environ[ENV_LIMIT]}") if limit is not None else (None, None)
    found = [
        (v, name)
        for v, name in (
            (_meminfo_available(), "MemAvailable in /proc/meminfo"),
            (_cgroup_available(), "the cgroup memory limit"),
        )
        if v is not None
    ]
    return min(found) if found else (None, None)


def host_copies() -> int:
    """How many copies of a variable created now live in host memory: the number of replicas when
    the current strategy's replicas are CPU devices, else 1 (one per accelerator)."""
    strategy = tf.distribute.get_strategy()
    try:
        devices = tuple(strategy.extended.worker_devices)
    except (AttributeError, RuntimeError, NotImplementedError):  # the default strategy
        devices = ()
    if devices and all("CPU" in d.upper() for d in devices):
        return len(devices)
    return 1


def check_allocation(what: str, nbytes: int, fix: str, copies: int = 1, fraction: float = DEFAULT_FRACTION) -> int:
    """Raise `ResourceError` if `copies * nbytes` exceeds `fraction` of the available memory.

    Args:
        what: what is allocated, e.g. "The replay buffer (1000000 x 32x32x3 float32)".
        nbytes: bytes of one copy.
        fix: what to change, e.g. "Lower JEM.buffer_size (gin: JEM.buffer_size = 10000)."
        copies: copies held in host memory (`host_copies()` for strategy variables).
        fraction: the share of the available memory the allocation may take.
    Returns:
        The total number of bytes.
    """
    total = int(nbytes) * int(copies)
    available, source = available_memory()
    if available is not None and total > fraction * available:
        per = f" ({copies} copies of {format_bytes(nbytes)}, one per replica)" if copies > 1 else ""
        raise ResourceError(
            f"{what} needs {format_bytes(total)}{per}, more than {int(fraction * 100)}% of the "
            f"{format_bytes(available)} available ({source}). {fix} (Set {ENV_LIMIT} to another "
            "number of bytes, or to 'none' to skip this check.)"
        )
    return total


def float32_bytes(*shape: int) -> int:
    return 4 * math.prod(int(d) for d in shape)
