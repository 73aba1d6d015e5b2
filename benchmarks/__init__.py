"""Benchmarks of the search service (issues 4 and 12).

- ``python -m benchmarks.run [--quick]``: machine limit, extraction, cache vs backbone in the loop at scale,
  head-training sweeps per batch size.
- ``python -m benchmarks.study [--workers N] [--md]``: the user's 30-trial ``fmnist_reg`` study, end to end.
- ``python -m benchmarks.trial jax``: one full-size trial and where its time outside ``fit`` goes.
- ``python -m benchmarks.kill_test``: seeded SIGKILLs over every stage, each resumed with the same command.
- ``python -m benchmarks.head_speed``: the head's cost per row at several training-set sizes.
- ``python -m benchmarks.snapshots``: plain, snapshots and MOASHA studies on one clock (multi-fidelity).
- ``python -m benchmarks.paired OLD NEW``: the same trials of two kept studies side by side.

One-off experiments whose figures RESULTS.md keeps were removed; RESULTS.md names the commit that has each one's
code (``git show COMMIT:benchmarks/NAME.py``).

Every Keras measurement runs in a fresh child process through ``search.isolate.run_isolated`` (the path a trial
takes), so the Keras backend is chosen per measurement (``KERAS_BACKEND``) and each peak memory belongs to that
measurement alone.  Benchmarks call public functions of ``search`` only.  Backbone weights are random
(``--weights random``): same FLOPs as ImageNet's, which cannot be downloaded here.  Figures are valid on an idle
machine only: every tool prints the load average with its figures and warns when the machine is busy.
"""
