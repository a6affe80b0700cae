"""What ``safeload scan`` learns of one file, in one place for both of its homes.

The scanner runs this in-process or, with ``--sandbox``, inside a worker; the two must reach
the same verdict on the same bytes, so the detection rules, the refusal and the list of
globals a refused pickle asks for are decided here once.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from safeload.errors import FormatError, RefusedError, SafeloadError
from safeload.formats._detect import Format, detect
from safeload.formats._read import TensorInfo, analyze, unsafe_globals
from safeload.policy import Limits

__all__ = ["DETECT_RULE", "Survey", "survey"]

logger = logging.getLogger(__name__)

DETECT_RULE = "formats.detect"
"""The rule ``detect`` raises under when no format matched: unknown, not a refusal."""


@dataclass(frozen=True, slots=True)
class Survey:
    """One file, as the scanner sees it: unknown, refused, or read with its tensor table."""

    format: Format | None
    """The detected format; None when no reader knows the bytes."""
    tensors: tuple[TensorInfo, ...] = ()
    refused: RefusedError | None = None
    """Why the readers refused the file (then ``tensors`` is empty)."""
    globals: tuple[str, ...] = ()
    """For a pickle refusal: every global the file's pickles ask for that no allowlist grants."""


def survey(view: memoryview, *, name: str, limits: Limits) -> Survey:
    """Detect, then validate everything without building tensors.

    A refusal while validating is returned, with the globals when a pickle rule refused it
    (listing them re-reads the pickle, so not after a limit was hit: it would be hit again).
    A malformed container or a bomb found while *detecting* is raised, as any other error.
    """
    try:
        detection = detect(view, name=name, limits=limits)
    except FormatError as exc:
        if exc.rule != DETECT_RULE:
            raise
        return Survey(None)
    if detection.format == Format.UNKNOWN:
        return Survey(None)
    try:
        analysis = analyze(view, name=name, limits=limits)
    except RefusedError as exc:
        found: tuple[str, ...] = ()
        if (exc.rule or "").startswith("pickle."):
            found = _globals(view, name, limits)
        return Survey(detection.format, refused=exc, globals=found)
    return Survey(analysis.format, tensors=analysis.tensors)


def _globals(view: memoryview, name: str, limits: Limits) -> tuple[str, ...]:
    """Best effort: the verdict stands whatever listing the names does."""
    try:
        return tuple(sorted(unsafe_globals(view, name=name, limits=limits)))
    except SafeloadError:
        return ()
    except Exception:  # a reader slip while listing names is no verdict
        logger.debug("could not list the globals of %s", name, exc_info=True)
        return ()
