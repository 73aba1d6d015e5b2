"""search.progress: what a run prints in a log (no terminal), and the closing Pareto table, every column named by split."""

from __future__ import annotations

import io

import optuna
from rich.console import Console

from search.progress import Display, pareto_table

NAMES = ["val_accuracy", "train_time_s"]


def _study() -> optuna.Study:
    study = optuna.create_study(study_name="p", directions=["maximize", "minimize"])
    study.set_user_attr("search:objective_split", "validation")
    dist = {"dropout": optuna.distributions.FloatDistribution(0.1, 0.7)}
    for d, acc, t in ((0.2, 0.8, 10.0), (0.5, 0.7, 5.0), (0.6, 0.6, 20.0)):
        study.add_trial(optuna.trial.create_trial(
            params={"dropout": d}, distributions=dist, values=[acc, t],
            user_attrs={"val_accuracy": acc, "test_accuracy": acc - 0.05, "test_f1": acc - 0.1,
                        "peak_memory_mb": 900.0, "train_class_counts": [10, 10], "fit_class_counts": [10, 10]}))
    return study


def _display() -> tuple[Display, io.StringIO]:
    out = io.StringIO()
    return Display(Console(file=out, width=200)), out


def test_log_lines_follow_the_run():
    study = _study()
    display, out = _display()
    display.start(study, 5, NAMES)
    display.on_event({"event": "trial", "number": 3, "params": {"dropout": 0.25, "l2": 1e-5}})
    display.on_event({"event": "progress", "stage": "training", "epoch": 1, "epochs": 2, "loss": 0.51234})
    done = study.get_trials()[0]
    display.on_trial_end(study, done)
    failed = optuna.trial.create_trial(state=optuna.trial.TrialState.FAIL,
                                       user_attrs={"fail_reason": "timed out after 5 s"})
    failed.number = 4
    display.on_trial_end(study, failed)
    text = out.getvalue().splitlines()
    assert text[0] == "study p: 3/5 COMPLETE trials at start"
    assert text[1] == "trial 3 started: dropout=0.25, l2=1.00e-05"
    assert text[2] == "  training epoch 1/2, loss 0.5123"
    assert text[3] == ("trial 0 COMPLETE: val_accuracy=0.8, train_time_s=10 [3/5]; "
                       "train classes [10, 10]")
    assert text[4] == "trial 4 FAIL: timed out after 5 s"


def test_extraction_progress_is_printed_every_tenth_not_every_batch():
    display, out = _display()
    display.study = _study()
    display.target, display.metric_names = 5, NAMES
    for done in range(0, 1001, 25):
        display.on_event({"event": "progress", "stage": "extracting features", "done": done, "total": 1000})
    printed = out.getvalue().splitlines()
    assert printed[0] == "  extracting features 0/1000 images" and printed[-1] == "  extracting features 1000/1000 images"
    assert len(printed) == 11


def test_pareto_table_names_the_split_of_every_column():
    study = _study()
    out = io.StringIO()
    Console(file=out, width=250).print(pareto_table(study, NAMES))
    text = out.getvalue()
    assert "Pareto-optimal trials of p (objectives on the validation split)" in text
    header = next(line for line in text.splitlines() if "trial" in line and "dropout" in line)
    assert [c.strip() for c in header.strip("┃│ ").split("┃")] == [
        "trial", "dropout", "val_accuracy", "train_time_s", "test_accuracy", "test_f1", "peak_memory_mb"]
    # trials 0 and 1 are Pareto-optimal; trial 2 (worse on both) is not
    rows = [line for line in text.splitlines() if line.startswith("│")]
    assert [r.split("│")[1].strip() for r in rows] == ["0", "1"]
