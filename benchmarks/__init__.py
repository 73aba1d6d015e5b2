"""Benchmarks of the search service (issues 4 and 12).

- ``python -m benchmarks.run [--quick]``: machine limit, extraction, cache vs backbone in the loop (at scale, plus
  a separate small-slice equivalence check), head-training sweeps, trials, Optuna overhead, KerasTuner.
- ``python -m benchmarks.study [--workers N] [--md]``: the user's 30-trial ``fmnist_reg`` study, end to end.
- ``python -m benchmarks.trial jax``: one full-size trial and where its time outside ``fit`` goes.
- ``python -m benchmarks.bf16``: float32 vs ``mixed_bfloat16`` head training on JAX, 3 seeds.
- ``python -m benchmarks.threads``: the head on 1 core, 2 cores, and two processes at once.
- ``python -m benchmarks.storage_load``: Optuna storages under concurrent workers.

Every Keras measurement runs in a fresh child process through ``search.isolate.run_isolated`` (the path a trial
takes), so the Keras backend is chosen per measurement (``KERAS_BACKEND``) and each peak memory belongs to that
measurement alone.  Benchmarks call public functions of ``search`` only.  Backbone weights are random
(``--weights random``): same FLOPs as ImageNet's, which cannot be downloaded here.  Figures are valid on an idle
machine only: every tool prints the load average with its figures and warns when the machine is busy.
"""
