"""Training and evaluation: hybrid (Algorithm 1) and joint training, checkpoints, logs.

``train(config, out_dir, ...)`` is the public entry point (the loop lives in
:mod:`facemtl.engine.loop`)."""


def train(*args, **kwargs):
    """Train as the config says; see :func:`facemtl.engine.loop.train`."""
    from facemtl.engine.loop import train as _train

    return _train(*args, **kwargs)
