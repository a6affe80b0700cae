"""The public face: every listed name resolves, and importing safeload stays cheap."""

from __future__ import annotations

import subprocess
import sys

import safeload


def test_every_public_name_resolves() -> None:
    for name in safeload.__all__:
        assert getattr(safeload, name) is not None, name
    assert set(safeload.__all__) <= set(dir(safeload))


def test_all_is_unique_and_matches_the_lazy_table() -> None:
    names = set(safeload.__all__)
    assert len(names) == len(safeload.__all__)
    # Every lazily imported name is public, so nothing hides behind __getattr__.
    assert set(safeload._LAZY) <= names


def test_unknown_attribute_is_an_attribute_error() -> None:
    try:
        _ = safeload.no_such_thing  # type: ignore[attr-defined]
    except AttributeError as exc:
        assert "no_such_thing" in str(exc)
    else:  # pragma: no cover
        raise AssertionError("expected AttributeError")


def test_import_safeload_loads_no_heavy_dependency() -> None:
    # The CLI, the sandbox worker and every app that only catches SafeloadError pay for this.
    code = (
        "import sys, safeload\n"
        "heavy = [m for m in ('torch', 'pydantic', 'numpy', 'sigstore', 'cryptography', 'onnx',"
        " 'onnxruntime', 'transformers', 'rich') if m in sys.modules]\n"
        "print(','.join(heavy))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_star_import_gives_the_public_names() -> None:
    namespace: dict[str, object] = {}
    exec("from safeload import *", namespace)
    assert "load" in namespace and "verify" in namespace and "SafeloadError" in namespace
