"""Test setup: without a GPU, kernels run through Triton's interpreter on tiny shapes.

TRITON_INTERPRET must be set before triton is imported, hence here, before any test
module imports the package."""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


@pytest.fixture(autouse=True)
def _seed(request: pytest.FixtureRequest) -> None:
    # Fresh but reproducible inputs per test case.
    torch.manual_seed(abs(hash(request.node.nodeid)) % (2**31))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
