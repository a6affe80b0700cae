"""The sandbox: parse untrusted model bytes in a worker that can only read its input and answer.

Public face of the capability; the machinery lives in private modules:

- :mod:`._runner` the parent side (get a worker, deadline, validate the reply and the result);
- :mod:`._forkserver` the parent's handle on the fork server every worker is forked from;
- :mod:`._worker` the worker process, the fork server's loop, and the fixed task registry;
- :mod:`._bootstrap` the entry script (imports only what the worker uses);
- :mod:`._layers` the five layers in order (``rlimits``, ``no_new_privs``, ``namespaces``,
  ``landlock``, ``seccomp``), one module each;
- :mod:`._transport` the memfd result channel (safetensors + a JSON skeleton);
- :mod:`._doctor` what this machine supports (``safeload doctor``).
"""

from __future__ import annotations

from safeload.sandbox._doctor import DoctorReport, doctor
from safeload.sandbox._layers import LAYERS, LayerReport
from safeload.sandbox._runner import (
    SandboxInput,
    SandboxResult,
    prewarm,
    run_in_sandbox,
    sandboxed_read,
)

__all__ = [
    "LAYERS",
    "DoctorReport",
    "LayerReport",
    "SandboxInput",
    "SandboxResult",
    "doctor",
    "prewarm",
    "run_in_sandbox",
    "sandboxed_read",
]
