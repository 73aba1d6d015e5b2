"""The data layer: datasets read from disk (built-in and a user's own), pooled, sliced, split and unbalanced.
Numpy only, no Keras: the coordinating process reads data without starting a backend."""
