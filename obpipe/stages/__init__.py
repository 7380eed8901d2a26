"""The pipeline's stages, one module per stage, each of the same shape (DESIGN.md, "The
stage shape"): ``NAME``, ``OUTPUTS`` (the product schema), ``Config`` (its typed options
section, defined next to the science), ``block`` or ``run`` and ``is_complete``.

This package module is a leaf: it only names the stages in run order, so that the
configuration can check ``[run] stages`` without importing any stage.
"""

#: every stage, in run order (:func:`obpipe.pipeline.registered_stages` follows it)
STAGE_NAMES: tuple[str, ...] = ("index", "normalize", "pca", "emission", "photometry",
                                "luminosity", "binary", "distance", "catalog")
