"""How every step becomes a KFP v2 component, and how a pipeline puts each task in its image.

The image is not known when a component is defined (import time): it comes from the configuration the
user resolved (`--config`, `--set kfp.image=...`), which only the pipeline builder has. So `step` builds
the component with a placeholder image and records whether it needs the GPU image; `TaskImages` sets
the configured image on every task the builder creates.
"""

from __future__ import annotations  # inside a running task kfp.dsl has no PipelineTask

import os
from collections.abc import Callable
from typing import Any

from kfp import dsl

from components.config import Kfp

PLACEHOLDER_IMAGE = "recsys-components:unset"  # replaced on every task by TaskImages
GPU_ATTRIBUTE = "recsys_gpu_image"


def step(func: Callable | None = None, *, gpu: bool = False):
    """Wrap a thin function as a KFP component that runs in the project's component image.

    `gpu=True` marks a step that runs in `kfp.gpu_image`. Inside a running task (KFP sets _KFP_RUNTIME)
    the plain function is returned. The body imports the project's own modules (installed in the image,
    and in the local venv that the KFP SubprocessRunner uses), so kfp is not pip-installed at run time.
    """

    def wrap(f: Callable):
        if os.environ.get("_KFP_RUNTIME") == "true":  # inside a running task kfp.dsl has no `component`
            return f
        component = dsl.component(f, base_image=PLACEHOLDER_IMAGE, install_kfp_package=False)
        setattr(component, GPU_ATTRIBUTE, gpu)
        return component

    return wrap(func) if func is not None else wrap


class TaskImages:
    """Creates pipeline tasks in the images of one resolved `kfp` configuration section."""

    def __init__(self, kfp: Kfp) -> None:
        self.kfp = kfp

    def image_of(self, component: Any) -> str:
        """The configured image for `component` (the GPU image for steps marked `gpu=True`)."""
        return self.kfp.gpu_image if getattr(component, GPU_ATTRIBUTE, False) else self.kfp.image

    def task(self, component: Any, **arguments: Any) -> dsl.PipelineTask:
        """`component(**arguments)` as a task whose container image is the configured one."""
        return component(**arguments).set_container_image(self.image_of(component))
