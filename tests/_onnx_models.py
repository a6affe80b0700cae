"""Model factories for the ONNX export tests, imported by the sandbox worker via ``preload``.

The worker runs ``python -I``; it finds ``tests`` as a namespace package because the editable
install puts the checkout on ``sys.path``. The hostile factories stand for caller code that
misbehaves during export: the sandbox, not these functions, must stop them.
"""

from __future__ import annotations

import socket
import subprocess

import torch
from torch import nn

__all__ = [
    "drifting",
    "hogs_memory",
    "mlp",
    "opens_socket",
    "small_cnn",
    "spawns_process",
    "writes_outside",
]


def small_cnn() -> nn.Module:
    """Conv, batch norm, pooling and a linear head: 1x3x8x8 -> 1x4."""
    torch.manual_seed(0)  # fixed shapes only: the weights come from the file under test
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(8, 4, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(4, 4),
    )


def mlp() -> nn.Module:
    """Two hidden layers with GELU: 2x16 -> 2x3."""
    return nn.Sequential(
        nn.Linear(16, 32), nn.GELU(), nn.Linear(32, 32), nn.Tanh(), nn.Linear(32, 3)
    )


def spawns_process() -> nn.Module:
    """Tries to start a program while the model is built (seccomp allows no new process)."""
    subprocess.run(["/bin/true"], check=True)
    return mlp()


def opens_socket() -> nn.Module:
    """Tries to open a network socket while the model is built (seccomp allows no socket)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.connect(("127.0.0.1", 9))
    return mlp()


def writes_outside() -> nn.Module:
    """Tries to write a file outside the output folder (Landlock allows none)."""
    with open("/tmp/safeload-onnx-export-escape", "w", encoding="utf-8") as f:
        f.write("escaped")
    return mlp()


class _Drifting(nn.Module):
    """Adds how many times it was called: the torch run and the traced export disagree."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(16, 3)
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return self.linear(x) + float(self.calls)


def drifting() -> nn.Module:
    """A model whose export is not what ran: the ORT comparison must catch it."""
    return _Drifting()


def hogs_memory() -> nn.Module:
    """Asks for far more memory than the worker's address-space limit allows."""
    hoard = bytearray(64 << 30)
    del hoard
    return mlp()
