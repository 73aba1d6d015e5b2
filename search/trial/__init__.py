"""The trial layer: one trial as it runs in its own process (search.trial.child), its measures, epoch snapshots
and pictures.  Nothing here imports Optuna."""
