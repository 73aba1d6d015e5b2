"""Hyperparameter search for transfer learning on a frozen ResNet50, on Optuna."""

__version__ = "0.1.0"
