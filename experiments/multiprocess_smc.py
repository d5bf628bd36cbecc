"""SMC with its particle axis sharded over the devices of several processes.

Every process runs this script with the same arguments but its own ``--process-id``; together they
run one SMC (FK steering of the reverse SDE of a two-component Gaussian mixture with its exact
velocity towards exp(r), r(x) = -0.5 (x - c)^T A (x - c)) whose N particles are split over all
processes' devices. Resampling (ESS, cumulative weights, ancestor gathers) runs inside the one jitted
loop of ``its.run`` through XLA collectives between the processes; particles reach the host only
after the run. Process 0 writes particles, log-weights, log Z and the NFE to ``--output`` (``.npz``).

Two tilts: ``tilted`` (the quadratic reward; resampling happens) and ``impossible`` (every reward is
-inf: uniform fallback, log Z = -inf, nothing NaN).

One process of a group (start one per process, e.g. one per host)::

    python -m experiments.multiprocess_smc --num-processes 2 --process-id 0 --coordinator localhost:12355
    python -m experiments.multiprocess_smc --num-processes 2 --process-id 1 --coordinator localhost:12355

All processes on this machine, from one command (a free port, one child per process)::

    python -m experiments.multiprocess_smc --launch --num-processes 2 --local-devices 2 --output out.npz

``--num-processes 1`` runs in this one process without the distributed runtime: the reference.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import socket
import subprocess
import sys
import time

CASES = ("tilted", "impossible")
ROOT = pathlib.Path(__file__).resolve().parents[1]


def problem(case: str, num_particles: int, seed: int):
    """``(sampler, noise)`` of one case: SMC over the Euler-Maruyama reverse SDE of a Gaussian mixture
    (exact velocity, linear path) and N(0, I) noise of shape (num_particles, 2) from ``seed``."""
    import jax
    import jax.numpy as jnp

    import itscale as its

    gmm = its.models.GaussianMixture(jnp.array([0.4, 0.6]), jnp.array([[-1.0, 0.0], [1.5, 0.5]]),
                                     jnp.array([[[0.5, 0.1], [0.1, 0.3]], [[0.4, 0.0], [0.0, 0.6]]]))
    center, precision = jnp.array([-0.5, 0.5]), jnp.array([[1.6, 0.4], [0.4, 1.0]])

    def tilt(x):
        d = x - center
        return -0.5 * jnp.einsum("ni,ij,nj->n", d, precision, d)

    def impossible(x):
        return jnp.full(x.shape[:1], -jnp.inf, x.dtype)

    path = its.paths.linear()
    base = its.refine.sde(gmm.velocity(path), path, grid=its.paths.Grid("uniform", t_min=0.0))
    reward = {"tilted": tilt, "impossible": impossible}[case]
    sampler = its.search.smc(base, reward, num_particles=num_particles, ess_threshold=0.8)
    noise = jax.random.normal(jax.random.key(seed + 1), (num_particles, gmm.dim))
    return sampler, noise


def solve(case: str, *, num_particles: int, num_steps: int, seed: int) -> dict:
    """One case, run with the particles over every device of every process (one device: plain run);
    returns the host values of the outputs, the same on every process."""
    import jax
    import numpy as np

    import itscale as its
    from itscale.core import multiprocess

    sampler, noise = problem(case, num_particles, seed)
    key = jax.random.key(seed)
    if jax.device_count() > 1:
        mesh = multiprocess.global_mesh()
        placed = multiprocess.shard_global(noise, mesh)
        block = num_particles // jax.process_count()
        mine = np.asarray(noise)[jax.process_index() * block:(jax.process_index() + 1) * block]
        from_blocks = multiprocess.shard_process_local(mine, mesh)   # the same array, built from blocks
        assert from_blocks.sharding == placed.sharding, (from_blocks.sharding, placed.sharding)
        np.testing.assert_array_equal(*multiprocess.gather((from_blocks, placed)))
        noise, key = placed, multiprocess.replicate_global(key, mesh)
    result = its.run(sampler, key, noise, num_steps=num_steps)
    out, stats = result.output, result.stats
    values = multiprocess.gather({
        "particles": out.particles, "log_weights": out.log_weights, "log_normalizer": out.log_normalizer,
        **{name: out.info[name] for name in ("ess", "num_resamples", "all_impossible", "ever_all_impossible")},
        "invalid_rewards": out.invalid_rewards,
        "nfe": stats.nfe, "verifier_calls": stats.verifier_calls, "nonfinite": stats.nonfinite})
    values["particle_devices"] = np.asarray(len(out.particles.sharding.device_set))
    values["process_count"] = np.asarray(jax.process_count())
    return values


def _run_here(args) -> None:
    """This process's part of the run (the whole run when ``--num-processes 1``)."""
    import jax

    jax.config.update("jax_enable_x64", args.x64)
    from itscale.core import multiprocess

    if args.num_processes > 1:
        multiprocess.initialize(args.coordinator, args.num_processes, args.process_id,
                                local_device_count=args.local_devices)
    elif args.local_devices is not None:
        jax.config.update("jax_num_cpu_devices", args.local_devices)
    import numpy as np

    figures = {}
    for case in args.cases:
        values = solve(case, num_particles=args.num_particles, num_steps=args.num_steps, seed=args.seed)
        figures.update({f"{case}/{name}": value for name, value in values.items()})
    if jax.process_index() == 0 and args.output is not None:
        np.savez(args.output, **figures)
        print(f"wrote {args.output}: {jax.process_count()} processes, {jax.device_count()} devices")
    if args.num_processes > 1:
        jax.distributed.shutdown()


def free_port() -> int:
    """A TCP port free on this machine now (for the coordinator)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def cpu_environment() -> dict[str, str]:
    """This process's environment for a CPU-only child that sets its own device count
    (``jax_num_cpu_devices``): ``JAX_PLATFORMS=cpu``, and ``XLA_FLAGS`` without any
    ``--xla_force_host_platform_device_count``, which would conflict with it (other flags pass on)."""
    flags = [flag for flag in os.environ.get("XLA_FLAGS", "").split()
             if not flag.startswith("--xla_force_host_platform_device_count")]
    return {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": " ".join(flags)}


def launch(args, forwarded: list[str]) -> int:
    """Start ``--num-processes`` processes of this script on this machine (CPU collectives over
    localhost), wait for them (``--timeout`` seconds in all) and return the first non-zero exit code.
    On a failure or timeout the remaining processes are stopped."""
    coordinator = f"localhost:{free_port()}"
    env = cpu_environment()
    children = [subprocess.Popen([sys.executable, "-m", "experiments.multiprocess_smc", *forwarded,
                                  "--num-processes", str(args.num_processes), "--process-id", str(i),
                                  "--coordinator", coordinator], cwd=ROOT, env=env)
                for i in range(args.num_processes)]
    deadline = time.monotonic() + args.timeout
    codes = [None] * len(children)
    try:
        while None in codes and time.monotonic() < deadline:
            codes = [child.poll() for child in children]
            if any(code not in (None, 0) for code in codes):
                break
            time.sleep(0.1)
    finally:
        for child in children:
            if child.poll() is None:
                child.kill()
                child.wait()
    if None in codes:
        print(f"timed out after {args.timeout} s", file=sys.stderr)
        return 124
    return next((code for code in codes if code), 0)


def parse(argv=None) -> tuple[argparse.Namespace, list[str]]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--num-processes", type=int, default=1)
    parser.add_argument("--process-id", type=int, default=0)
    parser.add_argument("--coordinator", default=None, help="host:port of process 0's coordinator")
    parser.add_argument("--local-devices", type=int, default=None, help="CPU devices per process")
    parser.add_argument("--launch", action="store_true", help="start every process here, on a free port")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds for --launch")
    parser.add_argument("--cases", nargs="+", choices=CASES, default=list(CASES))
    parser.add_argument("--num-particles", type=int, default=64)
    parser.add_argument("--num-steps", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--x64", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--output", default=None, help=".npz written by process 0")
    args = parser.parse_args(argv)
    if args.num_processes < 1:
        parser.error("--num-processes must be >= 1")
    if args.num_processes > 1 and not args.launch and args.coordinator is None:
        parser.error("--coordinator host:port is needed with --num-processes > 1 (or use --launch)")
    argv = sys.argv[1:] if argv is None else list(argv)
    forwarded = [a for a in argv if a != "--launch"]
    return args, _without(forwarded, ("--num-processes", "--process-id", "--coordinator", "--timeout"))


def _without(argv: list[str], options: tuple[str, ...]) -> list[str]:
    """``argv`` without the given options and their values (``--opt v`` or ``--opt=v``)."""
    kept, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg in options:
            skip = True
        elif arg.split("=", 1)[0] not in options:
            kept.append(arg)
    return kept


def main(argv=None) -> int:
    args, forwarded = parse(argv)
    if args.launch:
        return launch(args, forwarded)
    _run_here(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
