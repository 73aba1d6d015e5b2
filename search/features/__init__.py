"""The features layer: the frozen backbones and the on-disk feature cache that a trial reads instead of running
them (keys, the verified memory-mapped store, extraction jobs)."""
