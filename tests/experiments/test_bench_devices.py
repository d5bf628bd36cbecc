"""The benchmarks' CPU devices: one per core when asked before JAX starts, unchanged after."""

import subprocess
import sys

import jax

from experiments.bench import devices

_FRESH = """
from experiments.bench import devices
n = devices.use_every_core()
mesh = devices.core_mesh()
assert n == devices.cores(), (n, devices.cores())
assert (mesh is None) == (n == 1) and (mesh is None or mesh.size == n)
print("OK")
"""


def test_use_every_core_before_jax_starts_gives_one_device_per_core():
    done = subprocess.run([sys.executable, "-c", _FRESH], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and done.stdout.strip().endswith("OK"), done.stderr[-4000:]


def test_use_every_core_after_jax_started_keeps_its_devices():
    before = len(jax.devices("cpu"))
    assert devices.use_every_core() == before == len(jax.devices("cpu"))
    assert (devices.core_mesh() is None) == (before == 1)
