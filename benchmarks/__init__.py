"""Benchmarks of the search service (issue 4): ``python -m benchmarks.run [--quick] [--out FILE.json]``.

Every Keras measurement runs in a fresh child process through
``search.isolate.run_isolated`` (the same path a trial takes), so the Keras
backend can be chosen per measurement (``KERAS_BACKEND``) and each peak
memory belongs to that measurement alone.  Backbone weights are random
(``--weights random``): ImageNet weights cannot be downloaded here, and the
FLOPs, and so the speed, are the same.
"""
