"""Import Presidio (and the spaCy and thinc under it) without their GPU probes.

At import, Presidio's device detector imports torch and, when CUDA is there, puts a tensor on the
GPU; spaCy and thinc import cupy, torch, TensorFlow and MXNet when installed and ask CUDA for its
device count. On a GPU node, where the gateway often runs beside its engine and the engine's image
brings torch and cupy, that gave the eval process a CUDA context of its own: 610 MiB of the
engine's GPU memory on an H100, for a masker that runs pattern recognizers and no model (and the
import took 16.6 s and 1,190 MiB of memory, against 3.7 s and 152 MiB without those packages).

So Presidio's modules are imported here once, with those packages unimportable and
``PRESIDIO_DEVICE=cpu`` for the length of the import; both are put back after, so the optional
embedding similarity (sentence-transformers, torch) still loads when it is configured.
Import this module before any ``presidio_analyzer`` import.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager

# GPU frameworks spaCy, thinc and Presidio probe; and the model stacks of Presidio's NER recognizers,
# which we never build (transformers alone took seconds to import and printed "PyTorch was not found")
_PROBED = ("cupy", "cupyx", "torch", "tensorflow", "mxnet", "transformers", "gliner", "stanza", "langextract")
_DEVICE_ENV = "PRESIDIO_DEVICE"  # presidio_analyzer.nlp_engine.device_detector reads it first


@contextmanager
def gpu_frameworks_hidden() -> Iterator[None]:
    """GPU frameworks not yet imported raise ImportError inside; Presidio's device is ``cpu``."""
    hidden = [name for name in _PROBED if name not in sys.modules]
    for name in hidden:
        sys.modules[name] = None  # type: ignore[assignment]  # "import name" raises ImportError
    device = os.environ.get(_DEVICE_ENV)
    os.environ[_DEVICE_ENV] = "cpu"
    try:
        yield
    finally:
        for name in hidden:
            if name in sys.modules and sys.modules[name] is None:
                del sys.modules[name]
        if device is None:
            os.environ.pop(_DEVICE_ENV, None)
        else:
            os.environ[_DEVICE_ENV] = device


with gpu_frameworks_hidden():
    import presidio_analyzer  # noqa: F401
    import presidio_analyzer.context_aware_enhancers  # noqa: F401
    import presidio_analyzer.nlp_engine  # noqa: F401
    import presidio_analyzer.predefined_recognizers  # noqa: F401
