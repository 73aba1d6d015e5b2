"""``search.report``: a study's results as CSV, PNG figures and Markdown, optionally next to the paper's.

Modules, one concern each:

- ``load``: open a storage read-only and load one study (``StudyData``), every metric split-prefixed;
- ``tables``: the rows of ``trials.csv`` / ``pareto.csv`` and CSV writing;
- ``figures``: the figures, drawn with ``optuna.visualization.matplotlib`` where it can;
- ``repeats``: the confirmed-repeats section (study attribute ``search:confirm``);
- ``paper``: ``paper.toml`` and the comparison with the paper's tables;
- ``markdown``: ``summary.md``;
- ``write``: the whole report, written into a temporary directory and moved into place;
- ``cli``: the command line (``python -m search.report``).
"""
