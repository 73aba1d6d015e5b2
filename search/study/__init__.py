"""The study layer, the lowest that imports Optuna: storage, samplers, the objective, the study's lifecycle
(create, resume, identity, optimize), trial ownership and retries, snapshots, artifacts and confirmed repeats."""
