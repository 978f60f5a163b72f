"""TensorFlow tests. They run in a pytest process of their own (``pytest -m tf``, see the
Makefile): importing TensorFlow into a process that later loads torch's triton crashes, so
nothing here imports TensorFlow at module level and the torch tests deselect these."""

import os

import pytest

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("SM_FRAMEWORK", "tf.keras")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def pytest_collection_modifyitems(config, items):
    for item in items:
        if "tests/stacks/keras/" in str(item.fspath).replace(os.sep, "/"):
            item.add_marker(pytest.mark.tf)


@pytest.fixture
def tf():
    return pytest.importorskip("tensorflow")


@pytest.fixture(scope="session", autouse=True)
def _commands_forked_from_a_tensorflow_server():
    """``run_cli`` forks this process's commands from a server with TensorFlow, not torch, loaded."""
    import tests.conftest as shared

    shared.FORK_KIND = "tensorflow"
