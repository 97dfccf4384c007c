"""Shared fixtures."""

import pytest
import torch


def pytest_collection_modifyitems(config, items):
    """Tests marked gpu skip themselves where no CUDA device is present, so that plain `pytest` runs every tier."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="module")
def one_thread():
    """Run a module's training on one thread: steadier timings on 2-core machines, and deterministic results."""
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(saved)


@pytest.fixture(autouse=True, scope="session")
def private_check_cache(tmp_path_factory):
    """Checks remembered by ``bibaddiff.utils.check_file_once`` go to a folder of this test session, not the user's."""
    mp = pytest.MonkeyPatch()
    mp.setenv("BIBADDIFF_CACHE_DIR", str(tmp_path_factory.mktemp("bibaddiff-cache")))
    yield
    mp.undo()
