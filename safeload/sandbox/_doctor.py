"""``doctor``: which isolation layers this machine really gives the worker.

Detection in the calling process says what the kernel *offers*; a probe worker then applies
every layer for real and reports what *took*, because containers, AppArmor or seccomp profiles
of the host can refuse what the sysctls allow. Tests skip on the same report, so the reason a
test was skipped is the reason ``safeload doctor`` prints.
"""

from __future__ import annotations

import platform
import sys
import time
from dataclasses import dataclass
from typing import Any

from safeload.errors import SafeloadError
from safeload.policy import Limits
from safeload.sandbox._layers import LayerReport, detect_all

__all__ = ["DoctorReport", "doctor"]


@dataclass(frozen=True, slots=True)
class DoctorReport:
    """The machine, and one :class:`LayerReport` per layer in the order they are applied."""

    machine: str
    kernel: str
    python: str
    layers: tuple[LayerReport, ...]
    probe_error: str | None
    """Why the probe worker failed, or None when it ran (then ``applied`` is what it got)."""
    first_job_ms: float | None = None
    """The probe job, request to validated reply, with every layer: if this process had no
    fork server yet, this includes starting it (what a process's first sandboxed job pays)."""
    job_ms: float | None = None
    """A second probe job: a fork of the running server (what every later job pays)."""

    def layer(self, name: str) -> LayerReport:
        for report in self.layers:
            if report.name == name:
                return report
        raise KeyError(name)

    @property
    def supported(self) -> tuple[str, ...]:
        return tuple(r.name for r in self.layers if r.applied)

    def to_dict(self) -> dict[str, Any]:
        return {
            "machine": self.machine,
            "kernel": self.kernel,
            "python": self.python,
            "probe_error": self.probe_error,
            "first_job_ms": self.first_job_ms,
            "job_ms": self.job_ms,
            "layers": [r.to_dict() for r in self.layers],
        }

    def render_text(self) -> str:
        lines = [f"safeload sandbox on {self.machine}, Linux {self.kernel}, Python {self.python}"]
        for r in self.layers:
            mark = "ok " if r.applied else ("-- " if r.available else "no ")
            lines.append(f"  [{mark}] {r.name:<13} {r.reason}")
        if self.probe_error:
            lines.append(f"  probe worker failed: {self.probe_error}")
        elif self.first_job_ms is not None and self.job_ms is not None:
            lines.append(f"  worker start-up: {self.first_job_ms:.0f} ms for the probe job "
                         f"(with the fork server's start if it was not running), "
                         f"{self.job_ms:.1f} ms per job after")  # fmt: skip
        return "\n".join(lines)


def doctor(*, probe: bool = True, timeout: float = 60.0) -> DoctorReport:
    """Detect every layer, then (``probe=True``) confirm each one in a real worker."""
    detected = detect_all()
    layers = detected
    probe_error = None
    first_ms = job_ms = None
    if probe and sys.platform == "linux":
        from safeload.sandbox._runner import run_in_sandbox

        try:
            started = time.perf_counter()
            result = run_in_sandbox("probe", [], limits=Limits(), timeout=timeout)
            first_ms = (time.perf_counter() - started) * 1000
            started = time.perf_counter()
            run_in_sandbox("probe", [], limits=Limits(), timeout=timeout)
            job_ms = (time.perf_counter() - started) * 1000
        except SafeloadError as exc:
            probe_error = exc.diagnostics()
        else:
            applied = {r.name: r for r in result.layers}
            layers = tuple(
                applied.get(d.name, d) if d.available else d for d in detected
            )
    return DoctorReport(
        machine=platform.machine(),
        kernel=platform.release(),
        python=platform.python_version(),
        layers=layers,
        probe_error=probe_error,
        first_job_ms=first_ms,
        job_ms=job_ms,
    )
