"""The static budget of the run being traced, for ``init`` functions that allocate by it.

``init(key, x, params)`` does not receive the number of steps, yet some samplers must size buffers by
it (a token rollout allocates ``prompt_len + num_steps`` columns). ``its.run`` (and ``its.chain``, per
phase) make the static ``num_steps`` readable while they trace: :func:`current_budget`. It is a
Python int fixed at trace time, consistent with the compilation cache since ``num_steps`` is a static
argument of the jitted loop.
"""

from __future__ import annotations

import contextlib
import threading

_state = threading.local()


def _stack() -> list[int]:
    if not hasattr(_state, "stack"):
        _state.stack = []
    return _state.stack


@contextlib.contextmanager
def budget_scope(num_steps: int):
    """Make ``num_steps`` the current budget while tracing the ``with`` block."""
    _stack().append(num_steps)
    try:
        yield
    finally:
        _stack().pop()


def current_budget() -> int:
    """The static ``num_steps`` of the innermost run or chain phase being traced."""
    stack = _stack()
    if not stack:
        raise RuntimeError("current_budget() is only defined while its.run traces a sampler; pass the "
                           "budget explicitly (e.g. max_new_tokens=) to use the sampler outside its.run")
    return stack[-1]
