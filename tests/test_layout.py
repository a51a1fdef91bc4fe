"""The package's layout rules: shared parts import no family, Mask2Former imports no variant,
and the inference path does not pull in the training engine."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "mask2former"


def _imported_modules(path: Path) -> set[str]:
    """Absolute names of the modules a file imports (relative imports resolved)."""
    package = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts[:-1])
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = package.split(".")
            if node.level:
                base = base[: len(base) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            names.add(module)
            names |= {f"{module}.{alias.name}" for alias in node.names}
    return names


@pytest.mark.parametrize(
    ("folder", "forbidden"),
    [
        ("modeling", "mask2former.models"),  # shared parts import no family
        ("models/mask2former", "mask2former.models.mp_former"),  # no variant in the base model
    ],
)
def test_import_direction(folder, forbidden):
    offenders = {
        str(path.relative_to(PACKAGE)): sorted(n for n in _imported_modules(path)
                                               if n.startswith(forbidden))
        for path in (PACKAGE / folder).rglob("*.py")
    }
    assert {k: v for k, v in offenders.items() if v} == {}


def test_import_check_sees_relative_imports():
    names = _imported_modules(PACKAGE / "models" / "mp_former" / "build.py")
    assert "mask2former.models.mask2former.variant.DECODER_VARIANT_REGISTRY" in names


def test_predictor_does_not_import_the_training_engine():
    code = (
        "import sys, mask2former.predictor; "
        "print(sorted(m for m in sys.modules if m.startswith(('mask2former.engine', "
        "'detectron2.engine'))))"
    )
    out = subprocess.run(
        [sys.executable, "-W", "ignore", "-c", code], capture_output=True, text=True, check=True
    )
    assert out.stdout.strip().splitlines()[-1] == "[]"
