"""Presidio's import (spaCy's thinc) must not reach the GPU frameworks a GPU node has installed.

On an H100 beside an engine with torch and cupy in its image, thinc's import probe gave the eval
process a 610 MiB CUDA context. Here stand-in ``cupy`` and ``torch`` packages record their import in
a marker file: the masker's modules must import without them, and leave them importable after.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("thinc")

SRC = Path(__file__).resolve().parents[3] / "src"


def _stand_ins(root: Path, marker: Path) -> None:
    for name in ("cupy", "torch"):
        pkg = root / name
        pkg.mkdir()
        (pkg / "__init__.py").write_text(
            f"with open({str(marker)!r}, 'a') as f:\n    f.write({name!r} + '\\n')\n"
            "__version__ = '99.0.0'\n"
        )


def _run(code: str, root: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(root), str(SRC)])}
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("load", [
    "import infersight.evaluation.pii",
    "import infersight.evaluation.finance_recognizers",
    # the eval process's own path: the masker built and used
    "from infersight.evaluation.masking import presidio_mask\n"
    "assert presidio_mask()('mail ana@acme.com', 2000)[0] == 'mail [EMAIL]'",
])
def test_the_maskers_modules_import_no_gpu_framework(tmp_path: Path, load: str) -> None:
    marker = tmp_path / "imported.txt"
    (tmp_path / "site").mkdir()
    _stand_ins(tmp_path / "site", marker)
    got = _run(f"{load}\nimport os, sys, thinc.compat as c\n"
               "print(c.has_cupy, c.has_torch, 'cupy' in sys.modules, 'torch' in sys.modules, "
               "os.environ.get('PRESIDIO_DEVICE'))\n"
               "import torch\nprint(torch.__version__)\n", tmp_path / "site")
    assert got.returncode == 0, got.stderr
    flags, version = got.stdout.split("\n")[:2]
    # thinc saw neither, neither stayed half-imported, and Presidio's device setting was put back
    assert flags == "False False False False None"
    assert version == "99.0.0"  # importable again afterwards (sentence-transformers needs torch)
    assert marker.read_text() == "torch\n"  # the one import is the explicit one, after the masker's


def test_thinc_imports_them_without_the_guard(tmp_path: Path) -> None:
    # the stand-ins are real enough that thinc does import them when nothing hides them
    marker = tmp_path / "imported.txt"
    (tmp_path / "site").mkdir()
    _stand_ins(tmp_path / "site", marker)
    got = _run("import thinc.compat", tmp_path / "site")
    assert marker.exists() and "cupy" in marker.read_text().split(), got.stderr


def test_the_window_puts_back_an_operators_presidio_device(monkeypatch: pytest.MonkeyPatch) -> None:
    from infersight.evaluation.no_gpu_probe import gpu_frameworks_hidden

    monkeypatch.setenv("PRESIDIO_DEVICE", "cuda:1")
    monkeypatch.delitem(sys.modules, "mxnet", raising=False)
    with gpu_frameworks_hidden():
        assert os.environ["PRESIDIO_DEVICE"] == "cpu"
        with pytest.raises(ImportError):
            import mxnet  # noqa: F401
    assert os.environ["PRESIDIO_DEVICE"] == "cuda:1"
    assert "mxnet" not in sys.modules
