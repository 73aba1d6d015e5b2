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
    ``imports_keras`` (Keras, its backend and the backend's first op), ``trial_end``, and what is measured after
    the trial: ``load_split_s`` (loading the cached features and splitting them again, warm) and
    ``pictures_s`` (drawing the trial's two pictures with search.study.artifacts, as the coordinator does today),
    unless the trial reported a stage of its own for them.
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

    stages: list[str] = []

    def stamped(**fields):
        stages.append(str(fields.get("stage", "")))
        report(t=time.time(), **fields)

    trial_spec = spec["trial"]
    result = search.trial.child.run_trial(trial_spec, stamped)
    stamps["trial_end"] = time.time()
    import shutil
    import sys

    # keras.utils.set_random_seed imports TensorFlow whenever it is installed, whatever the backend: seconds and
    # hundreds of MB inside the first epoch's window of a JAX trial.  Say so; the parent times that import apart.
    stamps["tensorflow_imported"] = (keras.backend.backend() != "tensorflow"
                                     and sys.modules.get("tensorflow") is not None)  # None: blocked by isolate

    # Loading + splitting, once more, warm (page cache and imports as in the trial): the trial reports one
    # window for loading, splitting and copying the rows, and this separates the copy from the rest.
    from benchmarks.common import load_verified
    from search.data import datasets

    t = time.time()
    _, y = load_verified(trial_spec["cache_dir"], trial_spec["key"])
    datasets.protocol_split(y, trial_spec["params"]["split_ratio"], trial_spec["seed"],
                        trial_spec.get("evaluation", "test"), trial_spec.get("validation_fraction", 0.2))
    stamps["load_split_s"] = time.time() - t

    from pathlib import Path

    for path in result.pop("pictures", None) or []:  # drawn by the trial, as in a run; only timed here
        if not path.startswith("error:"):
            shutil.rmtree(Path(path).parent, ignore_errors=True)
    if not any("picture" in s for s in stages):  # the trial does not draw them (yet): time what the coordinator does
        stamps["pictures_s"] = _draw_pictures(result, spec.get("class_names"))
    return {"result": result, "stamps": stamps}


def _draw_pictures(result: dict, class_names: list[str] | None) -> float | None:
    """Seconds to draw the confusion matrix and per-class recall pictures of ``result`` (None: keys missing)."""
    import tempfile
    from pathlib import Path

    from search.trial import pictures

    cm = result.get("test_confusion_matrix", result.get("confusion_matrix"))
    recall = result.get("test_per_class_recall", result.get("per_class_recall"))
    if cm is None or recall is None:
        return None
    names = class_names or [str(i) for i in range(len(recall))]
    t = time.time()
    with tempfile.TemporaryDirectory(prefix="bench-pictures-") as tmp:
        pictures.confusion_matrix_png(cm, names, Path(tmp) / "cm.png", "confusion matrix")
        pictures.per_class_recall_png(recall, names, Path(tmp) / "recall.png", "per-class recall",
                                      train_counts=result.get("train_class_counts"))
    return time.time() - t
