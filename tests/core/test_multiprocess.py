"""Particles across processes: SMC with its particle axis split over 2 processes x 2 CPU devices (JAX's
multi-process runtime, gloo collectives over localhost) equals SMC in one process with the same key.

The runs are ``experiments.multiprocess_smc`` (SMC over the reverse SDE of a Gaussian mixture with its
exact velocity, 64 particles, 20 steps, float64), started in subprocesses since the device count and
the distributed runtime must be set before JAX starts its backend. Against one process with the same
4 devices the outputs are bitwise equal (crossing processes changes nothing); against one device the
discrete decisions (resampling times, ancestors, counts) are equal and the floating values agree to
rounding (XLA compiles a 16-particle shard and the 64-particle batch into different code).
"""

import math
import subprocess
import sys

import jax
import numpy as np
import pytest

from experiments import multiprocess_smc
from itscale.core import multiprocess, sharding

jax.config.update("jax_enable_x64", True)

NUM_PARTICLES, NUM_STEPS, SEED = 64, 20, 0
LAUNCH_TIMEOUT = 240  # seconds; the launch took 25 s at a load of 3 on 2 cores, 120 s at a load of 11
OUTPUTS = ("particles", "log_weights", "log_normalizer", "ess")
COUNTS = ("nfe", "verifier_calls", "num_resamples", "all_impossible", "ever_all_impossible",
          "invalid_rewards", "nonfinite")


def _run_script(folder, **commands):
    """Run ``experiments.multiprocess_smc`` with each command's arguments side by side; the outputs of
    each (``<name>.npz``) as dicts."""
    env = multiprocess_smc.cpu_environment()
    started = {}
    for name, args in commands.items():
        command = [sys.executable, "-m", "experiments.multiprocess_smc", "--num-particles",
                   str(NUM_PARTICLES), "--num-steps", str(NUM_STEPS), "--seed", str(SEED),
                   "--output", str(folder / f"{name}.npz"), *args]
        with open(folder / f"{name}.log", "w") as log:
            started[name] = subprocess.Popen(command, cwd=multiprocess_smc.ROOT, env=env, stdout=log,
                                             stderr=subprocess.STDOUT)
    try:
        for process in started.values():
            process.wait(timeout=LAUNCH_TIMEOUT + 60)
    finally:
        for process in started.values():
            if process.poll() is None:
                process.kill()
                process.wait()
    for name, process in started.items():
        assert process.returncode == 0, f"{name} failed:\n{(folder / f'{name}.log').read_text()[-4000:]}"
    return {name: dict(np.load(folder / f"{name}.npz")) for name in commands}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Outputs of 2 processes x 2 devices and of 1 process x 4 devices (run side by side)."""
    return _run_script(tmp_path_factory.mktemp("multiprocess"),
                       two_processes=["--launch", "--num-processes", "2", "--local-devices", "2",
                                      "--timeout", str(LAUNCH_TIMEOUT)],
                       four_devices=["--local-devices", "4"])


@pytest.fixture(scope="module")
def one_device():
    """The same cases in this process, on one device."""
    assert jax.device_count() == 1
    return {case: multiprocess_smc.solve(case, num_particles=NUM_PARTICLES, num_steps=NUM_STEPS, seed=SEED)
            for case in multiprocess_smc.CASES}


def _case(values, case):
    return {name.split("/", 1)[1]: value for name, value in values.items() if name.startswith(case + "/")}


@pytest.mark.multidevice
@pytest.mark.parametrize("case", multiprocess_smc.CASES)
def test_two_processes_equal_one_process_on_the_same_devices_bitwise(runs, case):
    two, four = _case(runs["two_processes"], case), _case(runs["four_devices"], case)
    assert int(two["process_count"]) == 2 and int(four["process_count"]) == 1
    assert int(two["particle_devices"]) == int(four["particle_devices"]) == 4
    for name in OUTPUTS + COUNTS:
        np.testing.assert_array_equal(two[name], four[name], err_msg=name)


@pytest.mark.multidevice
@pytest.mark.parametrize("case", multiprocess_smc.CASES)
def test_two_processes_equal_one_device(runs, one_device, case):
    two, one = _case(runs["two_processes"], case), one_device[case]
    for name in COUNTS:
        np.testing.assert_array_equal(two[name], one[name], err_msg=name)
    for name in OUTPUTS:
        np.testing.assert_allclose(two[name], one[name], rtol=1e-12, atol=1e-12, err_msg=name)
    # One network evaluation and one reward per particle per step.
    assert int(two["nfe"]) == int(two["verifier_calls"]) == NUM_PARTICLES * NUM_STEPS
    assert int(two["nonfinite"]) == 0 and int(two["invalid_rewards"]) == 0
    assert np.all(np.isfinite(two["particles"])) and not np.any(np.isnan(two["log_weights"]))


@pytest.mark.multidevice
def test_tilted_case_resamples_across_processes(runs):
    two = _case(runs["two_processes"], "tilted")
    assert int(two["num_resamples"]) >= 3 and not bool(two["all_impossible"])
    assert math.isclose(float(np.logaddexp.reduce(two["log_weights"])), 0.0, abs_tol=1e-12)
    assert np.isfinite(two["log_normalizer"])


@pytest.mark.multidevice
def test_every_reward_impossible_falls_back_without_nan(runs):
    two = _case(runs["two_processes"], "impossible")
    assert bool(two["all_impossible"]) and bool(two["ever_all_impossible"])
    assert float(two["log_normalizer"]) == -np.inf and float(two["ess"]) == 0.0
    np.testing.assert_array_equal(two["log_weights"], np.full(NUM_PARTICLES, -np.log(NUM_PARTICLES)))
    assert int(two["num_resamples"]) == NUM_STEPS - 1      # ESS = 0: uniform resampling but at the last step


def test_helpers_in_one_process_place_split_replicate_and_gather():
    mesh = multiprocess.global_mesh()
    assert mesh.axis_names == (sharding.PARTICLE_AXIS,) and mesh.devices.size == jax.device_count()
    x = np.arange(12.0).reshape(6, 2)
    placed = multiprocess.shard_global({"x": x, "scale": 2.0}, mesh)
    assert placed["x"].sharding == sharding.particle_sharding(mesh)
    assert placed["scale"].sharding.spec == jax.sharding.PartitionSpec()
    blocks = multiprocess.shard_process_local(x, mesh)        # one process: its block is everything
    key = multiprocess.replicate_global(jax.random.key(3), mesh)
    assert jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key)
    np.testing.assert_array_equal(jax.random.key_data(key), jax.random.key_data(jax.random.key(3)))
    back = multiprocess.gather({"x": placed["x"], "blocks": blocks, "scale": placed["scale"]})
    np.testing.assert_array_equal(back["x"], x)
    np.testing.assert_array_equal(back["blocks"], x)
    assert isinstance(back["x"], np.ndarray) and float(back["scale"]) == 2.0


def test_helpers_reject_bad_arguments_before_touching_the_runtime():
    mesh = multiprocess.global_mesh()
    with pytest.raises(TypeError, match="mesh must be a jax.sharding.Mesh"):
        multiprocess.shard_global(np.ones(2), "mesh")
    with pytest.raises(ValueError, match="scalars"):
        multiprocess.shard_process_local(np.float32(1.0), mesh)
    with pytest.raises(ValueError, match="process_id must be in"):
        multiprocess.initialize("localhost:1", 2, 2)
    with pytest.raises(ValueError, match="process_id"):
        multiprocess.initialize("localhost:1", 2, -1)
    with pytest.raises(ValueError, match="num_processes"):
        multiprocess.initialize("localhost:1", 0, 0)
    with pytest.raises(ValueError, match="unknown cpu_collectives"):
        multiprocess.initialize("localhost:1", 2, 0, cpu_collectives="tcp")
    with pytest.raises(ValueError, match="local_device_count"):
        multiprocess.initialize("localhost:1", 2, 0, local_device_count=0)
