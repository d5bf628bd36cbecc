"""Suite-wide settings.

* **Compile time.** The suite's time is mostly XLA compiling small programs; LLVM's optimisation passes
  are most of that. Tests check values, not speed, so the suite compiles with
  ``--xla_backend_optimization_level=0`` (about 30% less time on the search tests; XLA's HLO passes,
  which decide fusion, buffers and copies, still run) and ``--xla_cpu_use_fusion_emitters=false``
  (fusions emitted by the older LLVM IR emitters, not the MLIR pipeline: another 25-30% less time on the
  search, token and hybrid tests). Set ``XLA_FLAGS`` yourself to override them.
* **Memory mappings.** Every compiled XLA:CPU executable holds about six memory mappings, and JAX keeps
  each one cached while its function lives. A long-lived test worker compiles thousands of programs and
  would pass Linux's ``vm.max_map_count`` (65530), after which the next compile segfaults. Dropping the
  caches after each module bounds a worker's mappings by its largest module.
"""
import gc
import os

os.environ.setdefault("XLA_FLAGS", "--xla_backend_optimization_level=0 --xla_cpu_use_fusion_emitters=false")

import jax  # noqa: E402  (after XLA_FLAGS: the backend reads it once)
import pytest  # noqa: E402


@pytest.fixture(autouse=True, scope="module")
def _release_compiled_programs():
    yield
    jax.clear_caches()
    gc.collect()
