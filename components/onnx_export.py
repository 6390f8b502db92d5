"""What every ONNX export of the project shares (the user tower, the text encoder)."""

import logging
import warnings
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def quiet_onnx_export() -> Iterator[None]:
    """Silence the dynamo ONNX exporter's known, harmless noise (its progress lines are off by `verbose=False`):
    the 'torchvision is not installed' notices, the pytree `LeafSpec` FutureWarnings and the 'axis name ... will
    not be used' UserWarnings (a shared dynamic dimension)."""
    registration = logging.getLogger("torch.onnx._internal.exporter._registration")
    level = registration.level
    registration.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r".*LeafSpec.*", category=FutureWarning)
            warnings.filterwarnings("ignore", message=r"# The axis name: .* will not be used", category=UserWarning)
            yield
    finally:
        registration.setLevel(level)
