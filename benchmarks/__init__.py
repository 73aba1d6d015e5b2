"""Benchmarks of the search service (issues 4 and 12).

- ``python -m benchmarks.run [--quick]``: machine limit, extraction, cache vs backbone in the loop (at scale, plus
  a separate small-slice equivalence check), head-training sweeps, trials, Optuna overhead, KerasTuner.
- ``python -m benchmarks.study [--workers N] [--md]``: the user's 30-trial ``fmnist_reg`` study, end to end.
- ``python -m benchmarks.trial jax``: one full-size trial and where its time outside ``fit`` goes.
- ``python -m benchmarks.kill_test``: seeded SIGKILLs over every stage, each resumed with the same command.
- ``python -m benchmarks.snapshots``, ``benchmarks.augmentation``, ``benchmarks.paired``, ``benchmarks.memory_spread``:
  the multi-fidelity, augmentation, paired-study and memory-spread measurements of RESULTS.md.

One-off experiments whose figures RESULTS.md keeps (bf16, dispatch, threads, storage_load) were removed after
commit fdf3f5c; ``git show fdf3f5c:benchmarks/NAME.py`` gives their code.

Every Keras measurement runs in a fresh child process through ``search.isolate.run_isolated`` (the path a trial
takes), so the Keras backend is chosen per measurement (``KERAS_BACKEND``) and each peak memory belongs to that
measurement alone.  Benchmarks call public functions of ``search`` only.  Backbone weights are random
(``--weights random``): same FLOPs as ImageNet's, which cannot be downloaded here.  Figures are valid on an idle
machine only: every tool prints the load average with its figures and warns when the machine is busy.
"""
