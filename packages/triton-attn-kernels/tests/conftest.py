"""Test setup: without a GPU, kernels run through Triton's interpreter on tiny shapes.

TRITON_INTERPRET must be set before triton is imported, hence here, before any test
module imports the package."""

import os
import zlib

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


@pytest.fixture(autouse=True)
def _seed(request: pytest.FixtureRequest) -> None:
    # Fresh inputs per test case, the same in every process (str hashes are salted per process).
    torch.manual_seed(zlib.crc32(request.node.nodeid.encode()))


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("fuzz", "random GPU cases of test_fuzz.py")
    group.addoption("--fuzz-cases", type=int, default=100, help="how many random cases (default 100)")
    group.addoption("--fuzz-seed", type=int, default=1_000_000, help="seed of the first case (default 1000000)")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
