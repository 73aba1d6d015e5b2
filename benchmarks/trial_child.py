"""Child target of ``benchmarks.trial``: the production trial (``search.trial.child.run_trial``) with a wall-clock
stamp on every stage, so one trial's time outside ``fit`` can be broken down (issue 12 part 3a).

Only the standard library is imported at module level: the first stamp (``MODULE_T``) then marks the moment
the child process reached its target, before any of the trial's own imports.
"""

from __future__ import annotations

import time

MODULE_T = time.time()  # process start, interpreter, search.isolate and the job are behind this point


def timed_trial(spec: dict, report) -> dict:
    """Run ``search.trial.child.run_trial(spec["trial"], ...)`` and return its result with ``stamps``.

    Every progress event the trial reports carries ``t`` (``time.time()``, the same clock as the parent's).
    Stamps (seconds since the epoch): ``module``, the imports split in
    ``imports_search`` (search.trial.child and scikit-learn's split, which the trial imports lazily) and
    ``imports_keras`` (Keras, its backend and the backend's first op) and ``trial_end``.
    """
    stamps = {"module": MODULE_T}
    # Imports the trial would otherwise do inside its first stages (loading: scikit-learn; training: Keras and
    # the backend), so that those stages' windows hold only their own work.
    from sklearn import model_selection  # noqa: F401

    import search.trial.child  # noqa: F401

    stamps["imports_search"] = time.time()
    import keras

    keras.ops.convert_to_numpy(keras.ops.zeros((1,)))  # the backend's first op: device/client set-up
    stamps["imports_keras"] = time.time()

    def stamped(**fields):
        report(t=time.time(), **fields)

    result = search.trial.child.run_trial(spec["trial"], stamped)
    stamps["trial_end"] = time.time()
    import os
    import shutil

    for path in result.pop("pictures", None) or []:  # drawn by the trial, as in a run; only timed here
        if not path.startswith("error:"):
            shutil.rmtree(os.path.dirname(path), ignore_errors=True)
    return {"result": result, "stamps": stamps}
