"""Install Detectron2 from the package registry when it is not importable yet.

There is no ``detectron2`` package on PyPI. ``sal-detectron2==0.7.2`` is a wheel of
Detectron2 0.7.2 whose compiled part (``detectron2/_C``) was built for CPython 3.10. Its pure
Python part works with our torch and numpy, so this script downloads that wheel, replaces the
compiled module by a small Python module that raises a clear ``ImportError`` on use, retags the
wheel as pure Python and installs it without its (outdated) declared requirements.

A user who already has Detectron2 (for instance a source build) is left alone.

Usage: ``python tools/install_detectron2.py [--cache DIR]``
"""

import argparse
import base64
import hashlib
import importlib.util
import logging
import subprocess
import sys
import zipfile
from pathlib import Path

logger = logging.getLogger("install_detectron2")

DIST = "sal-detectron2"
VERSION = "0.7.2"

C_STUB = '''"""Placeholder for Detectron2's compiled ops, which this install does not provide.

Everything Mask2Former needs from Detectron2 is pure Python. Ops that do need the compiled
module (rotated boxes, deformable convolution, the fast COCO evaluation) raise on use.
"""


def get_compiler_version():
    return "none (pure-Python install of Detectron2)"


def get_cuda_version():
    return "none (pure-Python install of Detectron2)"


def has_cuda():
    return False


def __getattr__(name):
    raise ImportError(
        f"detectron2._C.{name} is not available: Detectron2 was installed from the "
        "pure-Python wheel by tools/install_detectron2.py. Build Detectron2 from source "
        "if you need its compiled ops (and use COCOEvaluator(use_fast_impl=False))."
    )
'''


def _record_hash(data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=")
    return "sha256=" + digest.decode()


def repack(src: Path, dst_dir: Path) -> Path:
    """Rewrite the cp310 wheel at ``src`` into a ``py3-none-any`` wheel in ``dst_dir``."""
    dist_info = f"{DIST.replace('-', '_')}-{VERSION}.dist-info"
    dst = dst_dir / f"{DIST.replace('-', '_')}-{VERSION}-py3-none-any.whl"
    entries = {}
    with zipfile.ZipFile(src) as zin:
        for info in zin.infolist():
            name = info.filename
            if name.startswith("detectron2/_C.") and name.endswith(".so"):
                continue
            if name == f"{dist_info}/RECORD":
                continue
            data = zin.read(name)
            if name == f"{dist_info}/WHEEL":
                lines = []
                for line in data.decode().splitlines():
                    if line.startswith("Tag:"):
                        line = "Tag: py3-none-any"
                    elif line.startswith("Root-Is-Purelib:"):
                        line = "Root-Is-Purelib: true"
                    lines.append(line)
                data = ("\n".join(lines) + "\n").encode()
            entries[name] = data
    entries["detectron2/_C.py"] = C_STUB.encode()
    record = [f"{name},{_record_hash(data)},{len(data)}" for name, data in entries.items()]
    record.append(f"{dist_info}/RECORD,,")
    entries[f"{dist_info}/RECORD"] = ("\n".join(record) + "\n").encode()
    tmp = dst.with_suffix(".tmp")
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as zout:
        for name, data in entries.items():
            zout.writestr(name, data)
    tmp.replace(dst)
    return dst


def _stub_is_outdated() -> bool:
    """True when the installed Detectron2 is ours (placeholder ``_C.py``) with an older stub."""
    spec = importlib.util.find_spec("detectron2._C")
    if spec is None or not (spec.origin or "").endswith("_C.py"):
        return False
    return Path(spec.origin).read_text() != C_STUB


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="[install_detectron2] %(message)s")
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", type=Path, default=Path(".cache/wheels"))
    parser.add_argument("--constraints", type=Path, default=Path("requirements/constraints.txt"))
    args = parser.parse_args()

    if importlib.util.find_spec("detectron2") is not None:
        if _stub_is_outdated():
            logger.info("updating the detectron2._C placeholder of an earlier install")
        else:
            logger.info("detectron2 is already importable; leaving it alone.")
            return 0

    args.cache.mkdir(parents=True, exist_ok=True)
    repacked = args.cache / f"{DIST.replace('-', '_')}-{VERSION}-py3-none-any.whl"
    if not repacked.exists() or _stub_is_outdated():
        logger.info("downloading %s==%s (cp310 wheel, pure-Python part used)", DIST, VERSION)
        pip = [sys.executable, "-m", "pip"]
        subprocess.run(
            pip + ["download", "-q", "--no-deps", "--only-binary=:all:", "--python-version",
                   "3.10", f"{DIST}=={VERSION}", "-d", str(args.cache)],
            check=True,
        )
        src = next(args.cache.glob(f"{DIST.replace('-', '_')}-{VERSION}-cp310-*.whl"), None)
        if src is None:
            raise FileNotFoundError(f"pip download left no cp310 wheel in {args.cache}")
        repacked = repack(src, args.cache)
        logger.info("repacked to %s", repacked)
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--force-reinstall",
         str(repacked)],
        check=True,
    )
    logger.info("installed detectron2 %s", VERSION)
    return 0


if __name__ == "__main__":
    sys.exit(main())
