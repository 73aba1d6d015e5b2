"""``summary.md``: the study at a glance, linking every file and figure of the report.

It opens with a warning when the weights are not ImageNet's, then states the split the objectives
were measured on, the Keras backend and the weights; then the Pareto set, the best trial per
objective, the figures (or why one was not drawn), the files, the repeats and the paper comparison.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from search.report.load import StudyData

# Shown after the objectives in the Pareto tables: the paper's headline measures, both splits.
PARETO_EXTRA = ("accuracy", "f1", "roc_auc", "roc_auc_hard")
PARETO_RESOURCES = ("train_time_s", "test_time_s", "peak_memory_mb", "trial_memory_mb")

CAPTIONS = {
    "pareto_pairs": "Every pair of objectives (Optuna's `plot_pareto_front`); red: the Pareto set over all "
                    "objectives, numbered; grey: trials outside their constraints.{extra}",
    "hypervolume": "Hypervolume of the Pareto front after each trial (Optuna's `plot_hypervolume_history`), "
                   "against the fixed reference point {extra} (raw units).",
    "param_importances": "Parameter importances (fANOVA, Optuna's `plot_param_importances`) per objective.",
    "accuracy_auc_vs_params": "Accuracy and ROC AUC on the {split} split against each searched parameter "
                              "(Optuna's `plot_slice`).",
    "learning_curves": "Training loss and accuracy per epoch, and accuracy on the {split} split (dashed), of the "
                       "Pareto-optimal trials.",
    "regularization": "Mean accuracy and ROC AUC on the {split} split per regularization setting "
                      "(as the paper's Figure 4).",
}


def fmt(v: Any) -> str:
    """A cell: 4 significant digits for ordinary floats, scientific for tiny or huge ones, '-' for none."""
    if v is None or v == "":
        return "-"
    if isinstance(v, float):
        if v == 0 or (1e-3 <= abs(v) < 1e4):
            return f"{v:.4g}"
        return f"{v:.2e}"
    return str(v)


def md_table(cols: list[str], rows: list[list[Any]]) -> str:
    """A Markdown table; cells formatted by ``fmt``, pipes escaped."""
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(fmt(v).replace("|", "\\|") for v in r) + " |" for r in rows]
    return "\n".join(lines)


def evaluation_text(d: StudyData) -> str:
    """Where the objectives were measured, in words."""
    if d.objective_split == "test":
        return "the test split (the paper's protocol: objectives measured on the held-out test split)"
    fraction = (d.config.get("training") or {}).get("validation_fraction", 0.2)
    return (f"the validation split ({fraction:g} of the training part, stratified, seeded); held-out test "
            f"metrics are stored as test_* and were never returned to the sampler")


def pareto_columns(d: StudyData) -> list[str]:
    """Metrics shown beside the objectives: accuracy, F1, the AUCs of both splits, then resources."""
    names = [p + m for m in PARETO_EXTRA for p in ("val_", "test_")] + list(PARETO_RESOURCES)
    return [m for m in names if m not in d.objective_names and any(m in d.attrs(t) for t in d.pareto)]


def pareto_cells(d: StudyData) -> tuple[list[str], list[list[Any]]]:
    """(columns, rows) of the Pareto set: trial, parameters, objectives, other metrics."""
    extra = pareto_columns(d)
    cols = ["trial", *d.params, *d.objective_names, *extra]
    rows = [[t.number, *(t.params.get(p, "") for p in d.params), *t.values, *(d.attrs(t).get(m, "") for m in extra)]
            for t in d.pareto]
    return cols, rows


def header_lines(d: StudyData) -> list[str]:
    """The study's context: data, weights, backend, split, trial counts (and snapshots when any)."""
    from optuna.trial import TrialState

    from search.report.load import DATA_ATTR

    counts = {s.name: sum(t.state == s for t in d.trials) for s in TrialState}
    data = d.study.user_attrs.get(DATA_ATTR) or {}
    lines = []
    if data:
        lines.append(f"- data: {(d.config.get('dataset') or {}).get('name', '?')} from {data.get('source')}, "
                     f"{data.get('n_images')} images, class counts {data.get('class_counts')}")
    lines.append(f"- backbone weights: {d.weights or 'not recorded'}")
    lines.append(f"- {d.backend_text} (of the COMPLETE trials; times and memory depend on it)")
    lines.append(f"- objectives measured on: {evaluation_text(d)}")
    lines.append("- trials: " + ", ".join(f"{n} {s}" for s, n in counts.items() if n))
    snapshots = d.snapshots
    if snapshots:
        n = sum(len(v) for v in snapshots.values())
        lines.append(f"- snapshots: {n} of the {len(d.complete)} COMPLETE trials are per-epoch snapshots "
                     f"(attribute snapshot_of) of {len(snapshots)} trained trials")
    lines.append("- objectives: " + ", ".join(f"{m} ({dirn})" for m, dirn in zip(d.objective_names, d.directions)))
    return lines


def summary_md(d: StudyData, files: dict[str, Path], notes: dict[str, str], captions: dict[str, str],
               paper: tuple[list[Any], list[str]] | None = None, paper_note: str = "",
               repeats: list[str] | None = None) -> str:
    """The whole summary.md.

    ``files``: written files by key (``trials_csv``, figure stems, ...); ``notes``: figure stem -> why it
    was not drawn; ``captions``: extra words per figure (e.g. the hypervolume's reference point);
    ``paper``: ``paper.compare``'s result; ``repeats``: ``repeats.markdown``'s lines.
    """
    lines = _head_lines(d) + _best_lines(d) + _figure_lines(d, files, notes, captions)
    lines += _file_lines(files) + (repeats or [])
    if paper is not None or paper_note:
        lines += _paper_lines(d, files, paper, paper_note)
    return "\n".join(lines) + "\n"


def _head_lines(d: StudyData) -> list[str]:
    """Title, warnings, description, the study's settings, where its pictures are, and the Pareto set."""
    from search.study.artifacts import ARTIFACT_DIR_ATTR

    lines = [f"# Study `{d.name}`", ""]
    if d.weights_warning:
        lines += [f"> **{d.weights_warning}**", ""]
    if d.config.get("description"):
        lines += [d.config["description"], ""]
    lines += header_lines(d)
    art = d.study.user_attrs.get(ARTIFACT_DIR_ATTR)
    if art:
        lines.append(f"- per-trial confusion matrices and per-class recall: Optuna artifacts in `{art}` "
                     f"(see them with `python -m search.dashboard`)")
    lines += ["", "## Pareto set", ""]
    lines.append(md_table(*pareto_cells(d)) if d.pareto else "No COMPLETE trials yet.")
    return lines


def _best_lines(d: StudyData) -> list[str]:
    if not d.complete:
        return []
    best = []
    candidates = d.feasible or d.complete
    for i, (m, dirn) in enumerate(zip(d.objective_names, d.directions)):
        pick = max if dirn == "maximize" else min
        t = pick(candidates, key=lambda t: t.values[i])
        best.append([m, dirn, t.values[i], t.number])
    return ["", "## Best trial per objective", "", "Among the trials within their constraints.", "",
            md_table(["objective", "direction", "best value", "trial"], best)]


def _figure_lines(d: StudyData, files: dict[str, Path], notes: dict[str, str], captions: dict[str, str]
                  ) -> list[str]:
    lines = ["", "## Figures", "", f"Every figure: {d.context}.", ""]
    for key, caption in CAPTIONS.items():
        heading = f"### {key.replace('_', ' ')}"
        if key in files:
            text = caption.format(split=d.objective_split, extra=captions.get(key, ""))
            lines += [heading, "", text, "", f"![{key}]({files[key].name})", ""]
        elif key in notes:
            lines += [heading, "", f"Not drawn: {notes[key]}.", ""]
    return lines


def _file_lines(files: dict[str, Path]) -> list[str]:
    lines = ["## Files", "", f"- [trials.csv]({files['trials_csv'].name}): every trial",
             f"- [pareto.csv]({files['pareto_csv'].name}): the Pareto set"]
    if "paper_csv" in files:
        lines.append(f"- [paper_comparison.csv]({files['paper_csv'].name}): the paper comparison")
    if "repeats_csv" in files:
        lines.append(f"- [repeats.csv]({files['repeats_csv'].name}): the confirmed trials, per seed summary")
    return lines


def _paper_lines(d: StudyData, files: dict[str, Path], paper: tuple[list[Any], list[str]] | None,
                 paper_note: str) -> list[str]:
    from search.report.paper import AGREE_TOLERANCE

    lines = ["", "## Comparison with the paper", ""]
    if d.weights_warning:
        lines += [f"> **{d.weights_warning}**", ""]
    if paper_note:
        lines.append(paper_note)
    if paper is None:
        return lines
    rows, trends = paper
    lines += ["Ours: the mean over the study's COMPLETE trials that match the paper's setting (n), "
              "measured on the held-out test split as the paper; \"ours measured as\" names the trial "
              "attribute and, for the AUCs, its flavour. Difference = ours - paper; quality metrics "
              f"within {AGREE_TOLERANCE} count as agreement. Times and memory were measured on other "
              "hardware and, here, with cached backbone features, so only their ratio is shown. "
              "A note says where the paper contradicts itself on that number.", "",
              md_table(["table", "setting", "metric", "ours measured as", "paper", "ours", "n", "difference",
                        "verdict", "note"],
                       [[r.table, r.setting, r.metric, r.measured_as, r.paper, r.ours, r.n, r.diff,
                         r.verdict, r.note] for r in rows])]
    if trends:
        lines += ["", "Trends:", ""] + [f"- {t}" for t in trends]
    agree = sum(r.verdict == "agrees" for r in rows)
    measured = sum(r.ours is not None and r.kind == "quality" for r in rows)
    lines += ["", f"{agree} of {measured} measured quality values agree with the paper within {AGREE_TOLERANCE}."]
    if "paper_comparison" in files:
        lines += ["", f"![paper_comparison]({files['paper_comparison'].name})"]
    return lines
