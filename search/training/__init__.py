"""The training layer: the trainable head (build, loss, fit, predict) and the training rows it is fitted on
(plain, augmented views, or images through the backbone)."""
