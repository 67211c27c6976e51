"""Deepfake-aware face verification: the runtime.

The Python API (``engine.api``)::

    from engine import FaceVerifier

    with FaceVerifier() as fv:                      # the bundled model
        result = fv.verify("a.jpg", "b.jpg")         # paths, encoded bytes or uint8 RGB arrays
        print(result.similarity, result.match, result.looks_fake)
        embeddings = fv.embed(["a.jpg", "b.jpg"])    # (2, D), L2-normalised
        print(fv.compare(embeddings[0], embeddings[1]))

Errors are exceptions (:class:`ImageError`, :class:`NoFaceError`,
:class:`ModelError`), never results. The command line is
``python -m engine.verify`` (``--help``); serving ``python -m engine.serve``.
The names below are imported on first use, so ``import engine`` stays light.
"""
__all__ = ["FaceVerifier", "Verification", "ImageError", "NoFaceError", "ModelError"]


def __getattr__(name: str):
    if name in __all__:
        from engine import api

        return getattr(api, name)
    raise AttributeError(f"module 'engine' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + __all__)
