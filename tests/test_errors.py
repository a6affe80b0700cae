"""The error tree: one base, structured fields, a readable diagnostic, stable codes."""

from __future__ import annotations

import inspect

import safeload
from safeload import errors


def test_every_public_error_derives_from_the_base() -> None:
    classes = [
        obj
        for _, obj in inspect.getmembers(errors, inspect.isclass)
        if issubclass(obj, Exception) and obj.__module__ == errors.__name__
    ]
    assert len(classes) >= 10
    for cls in classes:
        assert issubclass(cls, safeload.SafeloadError)
        assert cls.__doc__, f"{cls.__name__} needs a docstring"


def test_codes_are_unique_per_class() -> None:
    classes = [
        c
        for c in vars(errors).values()
        if isinstance(c, type) and issubclass(c, errors.SafeloadError)
    ]
    codes = [c.code for c in classes]
    assert len(codes) == len(set(codes))


def test_diagnostics_names_what_where_and_which_rule() -> None:
    err = safeload.UnsafeModelError(
        "global 'os.system' is not allowlisted",
        path="model.pt",
        rule="pickle.globals",
        offset=42,
        detail="safeload never imports or calls what a file names",
    )
    text = err.diagnostics()
    assert "os.system" in text and "model.pt" in text and "42" in text
    assert "pickle.globals" in text
    assert err.exit_code == 1
    assert err.to_dict()["code"] == "SL101"


def test_operational_errors_exit_2_and_refusals_exit_1() -> None:
    assert safeload.SourceError("x").exit_code == 2
    assert safeload.FormatError("x").exit_code == 1
    assert safeload.VerificationError("x").exit_code == 1
