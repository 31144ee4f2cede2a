"""Shared fixtures: reference data in ../shared (skipped when absent) and models."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest

#: Test modules that hold the longest tests (the quick start, 2-rank DeepSpeed runs, inductor
#: builds): run first, so that with ``-n 2`` (``make test``) the two workers finish together
#: instead of one running a 4-minute test alone at the end.
LONGEST_FIRST = (
    "test_quickstart.py",
    "test_distributed.py",
    "test_potential.py",
    "test_capture.py",
    "test_invariances.py",
)


def pytest_configure(config: pytest.Config) -> None:
    """In a pytest-xdist worker, one torch thread: two workers on two cores, each with an
    OpenMP team of two spinning threads, would slow every test many times over. Tests that
    need another thread count set it themselves."""
    import os

    if os.environ.get("PYTEST_XDIST_WORKER"):
        import torch

        torch.set_num_threads(1)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The longest tests' modules first (see ``LONGEST_FIRST``), the rest in their order."""
    rank = {name: k for k, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))


SHARED = Path(__file__).resolve().parents[1].parent / "shared"
REFERENCE_DATA = SHARED / "data" / "reference"
REFERENCE_CIFS = ("mp-18767-LiMnO2.cif", "mp-1175469-Li9Co7O16.cif")


@pytest.fixture(scope="session")
def reference_structures():
    """The two structures from the paper (LiMnO2, Li9Co7O16); skip when ../shared is absent."""
    from pymatgen.core import Structure

    if not REFERENCE_DATA.is_dir():
        pytest.skip(f"reference data not found at {REFERENCE_DATA}")
    return [Structure.from_file(REFERENCE_DATA / name) for name in REFERENCE_CIFS]


@pytest.fixture(scope="session")
def reference_chgnet():
    """The reference package's CHGNet 0.3.0 (skipped when chgnet is not installed)."""
    chgnet_model = pytest.importorskip("chgnet.model")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return chgnet_model.CHGNet.load(model_name="0.3.0", use_device="cpu", verbose=False)


@pytest.fixture(scope="session")
def model():
    """Our model with the reference 0.3.0 weights."""
    pytest.importorskip("chgnet")
    from fastchgnet import FastCHGNet

    return FastCHGNet.from_reference("0.3.0")


@pytest.fixture
def one_thread():
    """One torch and one OpenBLAS thread for the test (restored afterwards): small MD and
    relaxation work on a shared CPU loses far more to spinning threads than it gains."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        from threadpoolctl import threadpool_limits
    except ModuleNotFoundError:
        yield
    else:
        with threadpool_limits(limits=1, user_api="blas"):
            yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True, scope="session")
def compiled_store_in_a_temporary_folder(tmp_path_factory):
    """Programs compiled ahead of time go to a folder of this test session, never to the
    user's ~/.cache (``fastchgnet.compile.store.default_root`` reads the variable per call)."""
    import os

    before = os.environ.get("FASTCHGNET_CACHE_DIR")
    os.environ["FASTCHGNET_CACHE_DIR"] = str(tmp_path_factory.mktemp("fastchgnet-cache"))
    yield
    if before is None:
        os.environ.pop("FASTCHGNET_CACHE_DIR", None)
    else:
        os.environ["FASTCHGNET_CACHE_DIR"] = before
