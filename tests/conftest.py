import pytest
import torch


@pytest.fixture(autouse=True, scope="session")
def _private_cache(tmp_path_factory):
    """Readers' caches (Helen class maps) go to a temporary folder, not the user's home."""
    import os

    os.environ["FACEMTL_CACHE"] = str(tmp_path_factory.mktemp("facemtl-cache"))


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models: one intra-op thread is faster than two and avoids oversubscription when
    other jobs share the cores. Restores the caller's setting."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def run_two_gloo_processes():
    """``run(worker)``: ``worker(rank, port, results)`` in two spawned processes on a free local
    port; returns ``{rank: what the worker stored in results[rank]}``."""
    import os
    import socket

    import torch.multiprocessing as mp

    def run(worker) -> dict:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        os.environ.setdefault("OMP_NUM_THREADS", "1")
        with mp.Manager() as manager:
            results = manager.dict()
            mp.start_processes(worker, args=(port, results), nprocs=2, start_method="spawn")
            return dict(results)

    return run


@pytest.fixture
def hide_module(monkeypatch):
    """``hide(name)``: importing ``name`` or its submodules raises ImportError, as when the
    package is not installed (for the install-hint messages of optional extras)."""
    import builtins

    real_import = builtins.__import__

    def hide(name: str) -> None:
        def blocked(module, *args, **kwargs):
            if module == name or module.startswith(name + "."):
                raise ImportError(f"No module named {module!r}", name=module)
            return real_import(module, *args, **kwargs)

        monkeypatch.setattr(builtins, "__import__", blocked)

    return hide
