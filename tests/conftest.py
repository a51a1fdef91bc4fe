"""Fixtures shared by the whole suite."""

import os

import pytest

from mask2former.data.datasets.register_synthetic import register_all_synthetic
from mask2former.data.synthetic import generate_synthetic_dataset

# Predictors that name no backend run eager PyTorch here, not the "auto" choice (which exports
# the network once per input size); tests/test_predictor_backends.py covers the other backends.
# M2F_PREDICTOR_BACKEND=openvino (or another backend) runs the suite's Predictors in it.
os.environ.setdefault("M2F_PREDICTOR_BACKEND", "eager")


@pytest.fixture(scope="session")
def _small_synthetic_root(tmp_path_factory):
    """A small generated dataset (4 train, 3 val images at the default 192-256 px), written once
    per session: a fresh clone has no ``datasets/generated`` until the default run."""
    root = str(tmp_path_factory.mktemp("small_synthetic"))
    generate_synthetic_dataset(root, num_train=4, num_val=3, progress=False)
    return root


@pytest.fixture(scope="module")
def synthetic_data(_small_synthetic_root):
    """The ``synthetic_*`` dataset names point at the small dataset for one test module."""
    register_all_synthetic(_small_synthetic_root)
    yield _small_synthetic_root
    register_all_synthetic()  # back to the default root
