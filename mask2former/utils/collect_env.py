"""Environment report: versions and the state of the compiled deformable-attention op.

Usage: ``python -m mask2former.utils.collect_env``
"""

import importlib
import os
import platform
import sys

import torch


def _version(module_name: str) -> str:
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        return f"not importable ({exc})"
    return f"{getattr(module, '__version__', 'unknown')} @ {os.path.dirname(module.__file__)}"


def collect_env_info() -> list[tuple[str, str]]:
    """(name, value) rows describing Python, torch, Detectron2 and the compiled op."""
    from mask2former.layers import ms_deform_attn_dispatch as dispatch

    default = dispatch.default_impl()
    rows = [
        ("Python", sys.version.replace("\n", " ")),
        ("platform", platform.platform()),
        ("torch", f"{torch.__version__} @ {os.path.dirname(torch.__file__)}"),
        ("torch built with CUDA", str(torch.version.cuda)),
        ("GPU available", str(torch.cuda.is_available())),
    ]
    if torch.cuda.is_available():
        rows.append(("GPU 0", torch.cuda.get_device_name(0)))
    rows += [
        ("torch threads", str(torch.get_num_threads())),
        ("detectron2", _version("detectron2")),
        ("CUDA_HOME", os.environ.get("CUDA_HOME", "(unset)")),
        ("mask2former._C", dispatch._C.__file__ if dispatch.CPU_BUILT else "not built"),
        ("compiled op, CPU kernels", str(dispatch.CPU_BUILT)),
        ("compiled op, CUDA kernels", str(dispatch.CUDA_BUILT)),
        (f"{dispatch.ENV_VAR}", os.environ.get(dispatch.ENV_VAR, "(unset)")),
        # The user default (config default of MODEL.SEM_SEG_HEAD.DEFORMABLE_ATTENTION_IMPL) and
        # what a model built with it runs; each model may set its own.
        ("deformable attention default", default),
        ("deformable attention on CPU", dispatch.active_impl("cpu", default)),
        ("deformable attention on CUDA", dispatch.active_impl("cuda", default)),
    ]
    return rows


def main() -> None:
    rows = collect_env_info()
    width = max(len(name) for name, _ in rows)
    sys.stdout.write("".join(f"{name:<{width}}  {value}\n" for name, value in rows))


if __name__ == "__main__":
    main()
