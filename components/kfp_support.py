"""How every step becomes a KFP v2 component: one decorator, the image taken from the config."""

import os
from collections.abc import Callable

from kfp import dsl

from components.config import load_config


def step(func: Callable | None = None, *, gpu: bool = False):
    """Wrap a thin function as a KFP component that runs in the project's component image.

    Inside a running task (KFP sets _KFP_RUNTIME) the plain function is returned. The body imports
    the project's own modules (installed in the image, and in the local venv that the KFP
    SubprocessRunner uses), so kfp is not pip-installed at run time.
    """
    def wrap(f: Callable):
        if os.environ.get("_KFP_RUNTIME") == "true":  # inside a running task kfp.dsl has no `component`
            return f
        config = load_config()
        image = config.kfp.gpu_image if gpu else config.kfp.image
        return dsl.component(f, base_image=image, install_kfp_package=False)

    return wrap(func) if func is not None else wrap
