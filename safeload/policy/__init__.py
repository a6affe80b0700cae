"""Policy: the single validated model behind every loading decision."""

from safeload.policy._limits import Limits

__all__ = ["Limits"]
