"""Build entry point of the mask2former package.

The compiled multi-scale deformable-attention op (``mask2former._C``) is built here when possible;
when it cannot be compiled the install still succeeds and the pure-PyTorch path is used.

Environment variables:
    FORCE_CUDA=1            build the CUDA kernels even when no CUDA toolkit is detected.
    M2F_BUILD_CUDA=0        build the CPU kernels only, even when a CUDA toolkit is found.
    M2F_BUILD_EXT=0         build no extension at all (pure-PyTorch install).
    CUDA_HOME               root of the CUDA toolkit (the folder holding bin/nvcc).
    TORCH_CUDA_ARCH_LIST    GPU architectures; default "8.0;9.0+PTX" when no GPU is visible.
    MAX_JOBS                parallel compile jobs (ninja).
"""

import logging
import os
import re
import shutil
import sys
from pathlib import Path

from setuptools import find_packages, setup

logger = logging.getLogger("mask2former.setup")

ROOT = Path(__file__).resolve().parent
CSRC = Path("mask2former") / "layers" / "csrc"
DEFAULT_CUDA_ARCH_LIST = "8.0;9.0+PTX"


def _env_flag(name: str) -> bool | None:
    """True / False for an environment variable set to 1 / 0 (also yes/no, on/off), else None."""
    raw = os.environ.get(name, "").strip().lower()
    if raw in ("1", "true", "yes", "on"):
        return True
    if raw in ("0", "false", "no", "off"):
        return False
    return None


def find_cuda_home() -> str | None:
    """Root of the CUDA toolkit: CUDA_HOME / CUDA_PATH, else the root of the nvcc on PATH.

    nvcc on PATH may be a symlink or a small wrapper script that execs the real compiler; the
    root is the folder holding ``bin/nvcc`` and ``include/cuda.h``.
    """
    for name in ("CUDA_HOME", "CUDA_PATH"):
        if os.environ.get(name):
            return os.environ[name]
    nvcc = shutil.which("nvcc")
    candidates = []
    if nvcc:
        real = Path(nvcc).resolve()
        candidates.append(real.parent.parent)
        try:
            text = real.read_text(errors="replace") if real.stat().st_size < 65536 else ""
        except OSError:
            text = ""
        # A wrapper script: look for the absolute path of the compiler it runs.
        candidates += [Path(p).parent.parent for p in re.findall(r"(/[^\s\"']+/bin/nvcc)\b", text)]
    candidates.append(Path("/usr/local/cuda"))
    for root in candidates:
        if (root / "bin" / "nvcc").is_file() and (root / "include" / "cuda.h").is_file():
            return str(root)
    return None


def extension_modules(with_cuda: bool):
    """The ``mask2former._C`` extension, with or without its CUDA kernels."""
    from torch.utils.cpp_extension import CppExtension, CUDAExtension

    sources = [str(CSRC / "ms_deform_attn.cpp"), str(CSRC / "ms_deform_attn_cpu.cpp")]
    # OpenMP: at::parallel_for of this torch build is OpenMP-based and inlined into our code.
    # -g0: no debug info (Python's flags add -g), for a faster build and a smaller library.
    cxx = ["-O3", "-g0", "-fopenmp"]
    if not with_cuda:
        return [
            CppExtension(
                "mask2former._C",
                sources,
                extra_compile_args={"cxx": cxx},
                extra_link_args=["-fopenmp"],
            )
        ]
    return [
        CUDAExtension(
            "mask2former._C",
            sources + [str(CSRC / "ms_deform_attn_cuda.cu")],
            define_macros=[("WITH_CUDA", None)],
            extra_compile_args={"cxx": cxx, "nvcc": ["-O3", "--use_fast_math"]},
            extra_link_args=["-fopenmp"],
        )
    ]


def _strip_cuda(ext) -> bool:
    """Turns a CUDAExtension into its CPU-only variant in place; False when it had no CUDA."""
    if not any(str(src).endswith(".cu") for src in ext.sources):
        return False
    ext.sources = [src for src in ext.sources if not str(src).endswith(".cu")]
    ext.define_macros = [macro for macro in ext.define_macros if macro[0] != "WITH_CUDA"]
    ext.libraries = [lib for lib in ext.libraries if "cuda" not in lib]
    return True


def build_config():
    """Extensions and cmdclass for setup(); empty when torch is missing or M2F_BUILD_EXT=0."""
    if _env_flag("M2F_BUILD_EXT") is False:
        logger.warning("M2F_BUILD_EXT=0: not building the compiled deformable-attention op")
        return [], {}
    # ninja installed by pip lies beside the interpreter, which is not on PATH when the virtual
    # environment is not activated (torch looks for ninja on PATH).
    os.environ["PATH"] = os.pathsep.join(
        [os.path.dirname(sys.executable), os.environ.get("PATH", os.defpath)]
    )
    cuda_home = find_cuda_home()
    if cuda_home:
        # Before importing torch.utils.cpp_extension, which reads it once.
        os.environ["CUDA_HOME"] = cuda_home
    try:
        import torch
        from torch.utils.cpp_extension import BuildExtension
    except ImportError:
        logger.warning("torch is not importable: building without the compiled op")
        return [], {}

    force_cuda = _env_flag("FORCE_CUDA") is True
    with_cuda = torch.version.cuda is not None and (cuda_home is not None or force_cuda)
    if _env_flag("M2F_BUILD_CUDA") is False and not force_cuda:
        with_cuda = False
    if with_cuda and not torch.cuda.is_available():
        os.environ.setdefault("TORCH_CUDA_ARCH_LIST", DEFAULT_CUDA_ARCH_LIST)

    class OptionalBuildExtension(BuildExtension):
        """Builds the op; on failure retries without CUDA, then gives up with a warning.

        ``run`` is retried as a whole: it makes a fresh compiler each time.
        """

        def run(self):
            # Options that a failed run() leaves changed: the compiler (replaced by an object) and
            # inplace (cleared while building, restored only on success).
            compiler_option, inplace = self.compiler, self.inplace
            try:
                super().run()
                return
            except Exception as exc:  # any compiler or toolkit failure must not stop the install
                if not any([_strip_cuda(ext) for ext in self.extensions]):
                    logger.warning("could not build the compiled op (%s): using pure PyTorch", exc)
                    return
                logger.warning("could not build the CUDA kernels (%s): retrying CPU only", exc)
            self.compiler, self.inplace = compiler_option, inplace
            try:
                super().run()
            except Exception as exc:  # as above
                logger.warning("could not build the compiled op (%s): using pure PyTorch", exc)

    return extension_modules(with_cuda), {"build_ext": OptionalBuildExtension}


ext_modules, cmdclass = build_config()

setup(
    name="mask2former",
    version="0.1.0",
    description="Mask2Former and its successors as a Detectron2 extension",
    packages=find_packages(include=["mask2former", "mask2former.*"]),
    python_requires=">=3.10",
    package_data={"mask2former.data.datasets": ["*.json"]},
    ext_modules=ext_modules,
    cmdclass=cmdclass,
)
