"""The Python API: a study from a config, its data and features prepared once, optimized to its target.

``search.run``, ``search.confirm``, the benchmarks and the test fixtures are built on it::

    import search

    config = search.load_config("smoke", n_trials=3)
    s = search.Search(config, storage="sqlite:///studies.db", weights="random")
    summary = s.optimize()                    # creates or resumes the study, extracts features once
    s.study.best_trials                       # the plain optuna.Study
    s.confirm(seeds=3)                        # the Pareto set again with 3 other seeds

The stages run in the order that keeps every guarantee of the command line: everything that needs
no storage is checked first (a bad input leaves no database behind), a resume with other settings is
refused before the feature extraction, and the study is created, with its identity, only then.
Several processes or machines share a study by running ``optimize`` on the same storage (Optuna's
distributed mode); each counts toward the one target.
"""

from __future__ import annotations

import threading
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import optuna
from optuna.trial import TrialState

from search import isolate, signals
from search.config import (StudyConfig, check_study_name, differences, load_config as _load_config, safe_name,
                           study_identity)
from search.config.choices import DATASETS
from search.config.schema import FieldError
from search.config.spec import TrialSpec
from search.data import datasets
from search.errors import ConfigError, DataError, DriftError, Interrupted, SearchError, TrialFailed, UsageError
from search.features import backbones, feature_cache
from search.runtime import extraction_backend, resolve_backend, runtime_identity
from search.study import artifacts, lifecycle as st, objective, repeats, samplers, storage as sto
from search.training import augment

Message = Callable[[str], None]
Event = dict[str, Any]


def load_config(study: str | Path, *, weights: str | None = None, seed: int | None = None,
                n_trials: int | None = None, timeout: float | None = None,
                trial_timeout: float | None = None, subset: int | None = None) -> StudyConfig:
    """The config ``study`` (a name in study_configs/ or a .toml path), validated, with any overrides;
    ``subset``: a stratified slice of that many images (0: all), validated as the file's ``dataset.subset``."""
    config = _load_config(str(study), subset=subset)
    if weights:
        config = config.with_weights(weights)
    if seed is not None:
        config = config.with_seed(seed)
    for name, value in (("n_trials", n_trials), ("timeout", timeout), ("trial_timeout", trial_timeout)):
        if value is not None:
            config = config.with_run(**{name: value})
    return config


@dataclass(frozen=True)
class Data:
    """What a study's data are: read once, fingerprinted, described for the study's attributes."""

    source: str
    n_images: int
    class_names: tuple[str, ...]
    class_counts: list[int]
    fingerprint: str

    def as_attr(self) -> dict[str, Any]:
        return {"source": self.source, "n_images": self.n_images, "class_names": list(self.class_names),
                "class_counts": self.class_counts}


@dataclass
class Search:
    """One study of ``config`` in ``storage`` (an Optuna URL; default $SEARCH_STORAGE, else sqlite:///studies.db).

    ``weights`` overrides the config's backbone weights and names the study apart (``NAME-random``) unless
    ``study_name`` is given.  ``on_message`` gets one line per stage, ``on_event`` the trial processes'
    progress events.  ``worker``/``workers``: this process's place among ``--workers`` processes.
    """

    config: StudyConfig | str | Path
    storage: str | None = None
    study_name: str | None = None
    weights: str | None = None
    data_dir: Path | None = None
    cache_dir: Path | None = None
    backend: str | None = None
    artifact_dir: Path | None = None
    heartbeat: int = 10
    debug: bool = False
    on_message: Message = lambda line: None
    on_event: Callable[[Event], None] = lambda event: None
    trial_target: str | None = None   # "module:function" a trial process runs (default search.trial.child:run_trial)
    worker: int = 0
    workers: int = 1
    _state: dict[str, Any] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        if isinstance(self.config, (str, Path)):
            self.config = load_config(self.config, weights=self.weights)
        elif self.weights and self.config.backbone.weights != self.weights:
            self.config = self.config.with_weights(self.weights)
        self.backend = resolve_backend(self.backend)
        self.study_name = check_study_name(self.study_name if self.study_name is not None
                                           else default_study_name(self.config.name, self.weights))
        self.url = sto.check_url(sto.storage_url(self.storage))
        self.cache_dir = Path(self.cache_dir or feature_cache.default_cache_dir()).resolve()
        self.location = datasets.location(self.config.dataset.name, self.config.dataset.path, self.data_dir)
        self.target = samplers.target(self.config)

    # ------------------------------------------------------------ stages (each runs once)

    def check(self) -> None:
        """Everything that needs neither the data nor a write: the storage file, the system, the weights."""
        if "checked" in self._state:
            return
        sto.check_sqlite(self.url)  # before the data are read: a damaged file is the one thing said
        if "trial_memory_mb" in self.config.metric_names and not isolate.can_reset_peak():
            raise UsageError(f"study {self.config.name}: objective trial_memory_mb needs /proc/self/clear_refs "
                             "(Linux >= 4.0), which this system does not allow; use peak_memory_mb instead")
        # One feature cache per (backbone, input size) a trial can use; the first is the study's own (views,
        # online augmentation and picture titles use it): the config's fixed one unless the study searches them.
        self.weights_by_set = {f"{n}@{s}": backbones.resolve_weights(self.config.backbone.weights, n, s)
                               for n, s in self.config.feature_sets()}
        self.resolved_weights = next(iter(self.weights_by_set.values()))
        self.runtime = runtime_identity(self.backend)
        self._state["checked"] = True

    def load_data(self) -> Data:
        """Read the dataset once: its fingerprint names the features and the study's identity."""
        if "data" not in self._state:
            self.check()
            c = self.config
            pooled = datasets.load_pooled(c.dataset.name, self.location, c.dataset.subset)
            names = datasets.class_names(c.dataset.name, pooled)
            if pooled.class_names is not None:  # a user's own data: what the config could not check at load
                _check_user_classes(c, pooled, names)
            d = Data(pooled.source, int(len(pooled.labels)), names, datasets.class_counts(pooled.labels, len(names)),
                     pooled.fingerprint())
            self.cache_keys = {k: feature_cache.study_key(c, w, d.fingerprint, self.runtime)
                               for k, w in self.weights_by_set.items()}
            self.cache_key = next(iter(self.cache_keys.values()))
            self.identity = study_identity(c, self.resolved_weights.identity, d.fingerprint, self.runtime)
            if len(self.weights_by_set) > 1:
                self.identity["backbone"]["weights_by_set"] = {k: w.identity for k, w in self.weights_by_set.items()}
            self.on_message(f"data: {c.dataset.name} from {d.source}, {d.n_images} images, classes "
                            f"{d.class_counts}; weights {self.resolved_weights.identity}")
            self._state["data"] = d
        return self._state["data"]

    def prepare(self) -> dict[str, Any]:
        """The data, a refusal of a resume with other settings, and the feature caches (extracted once, in a
        child process); returns what trials need beyond the plain cache (search.training.augment.extra_spec)."""
        if "extra_spec" not in self._state:
            d = self.load_data()
            if not self.worker:  # a worker's parent has checked; open_study checks again
                st.check_resume(self.url, self.study_name, self.identity)
            self._state["extra_spec"] = self._ensure_features(d.fingerprint)
        return self._state["extra_spec"]

    def open_study(self) -> optuna.Study:
        """Create the study (with its identity) or resume it; its grid queued, its artifact store ready."""
        if "study" not in self._state:
            self.prepare()
            optuna.logging.set_verbosity(optuna.logging.ERROR)
            warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
            storage = sto.open_storage(self.url, heartbeat_interval=self.heartbeat,
                                       max_retry=self.config.run.max_retries)
            study, created = st.create_or_resume(storage, self.study_name, self.config, self.identity,
                                                 samplers.ProcessSeeded(self.config),
                                                 extra_attrs={"search:data": self.load_data().as_attr()})
            self.on_message(f"study {self.study_name!r} ({'new' if created else 'resumed'}) in {sto.mask(self.url)}; "
                            f"objectives on the {self.config.objective_split} split; trials train on "
                            f"Keras/{self.backend}")
            self._state["artifact_dir"] = artifacts.prepare(study, self.url, self.artifact_dir)
            if self.config.sampler.name == "grid" and not self.worker:
                st.queue_grid_points(study, self.config, self.target)
            self._state["study"] = study
        return self._state["study"]

    @property
    def extractions(self) -> list[dict[str, Any]]:
        """The extractions ``prepare`` ran (a complete cache is only read): entry, what, images, wall_s,
        peak_memory_mb of each."""
        return list(self._state.get("extractions", []))

    @property
    def study(self) -> optuna.Study:
        """The plain ``optuna.Study`` (created or resumed on first use)."""
        return self.open_study()

    # ------------------------------------------------------------ trials

    def context(self, cpus: tuple[int, ...] | None = None) -> objective.Context:
        """What every trial of this study shares: the config, the caches, the classes, the runtime."""
        d, extra = self.load_data(), self.prepare()
        return objective.Context(config=self.config, cache_dir=self.cache_dir, cache_key=self.cache_key,
                                 cache_keys=self.cache_keys,
                                 n_classes=len(d.class_names), class_names=d.class_names, target=self.target,
                                 debug=self.debug, artifact_dir=self._state.get("artifact_dir", self.artifact_dir),
                                 backend=self.backend, weights=self.resolved_weights.identity, cpus=cpus,
                                 heartbeat_s=self.heartbeat, trial_target=self.trial_target or objective.TRIAL_TARGET,
                                 extra_spec=extra)

    def trial_spec(self, params: dict[str, Any] | None = None) -> TrialSpec:
        """The job of one trial with ``params`` (searched values; the rest from the config) for ``run_trial``."""
        return objective.trial_spec(self.context(), objective.resolve_params(self.config, params or {}))

    def optimize(self, *, cpus: tuple[int, ...] | None = None,
                 callbacks: list[Callable] = ()) -> st.RunSummary:
        """Run trials until the study holds its target of COMPLETE trials (or the config's timeout).

        On SIGINT/SIGTERM this process's running trials are recorded failed and queued for retry, and
        ``Interrupted`` is raised with ``retried`` (their numbers) set: the same call resumes the study.
        """
        if threading.current_thread() is threading.main_thread():  # Python allows signal handlers there only
            signals.install()  # SIGINT/SIGTERM never leave a trial RUNNING without its owner (search.signals)
        study, ctx = self.open_study(), self.context(cpus)
        run = self.config.run
        policy = st.RetryPolicy(grid=self.config.sampler.name == "grid", max_retries=run.max_retries,
                                max_failures=run.max_consecutive_failures)
        try:
            return st.optimize(study, objective.make_objective(ctx, self.on_event), self.target, run.timeout,
                               policy, callbacks=list(callbacks))
        except Interrupted as e:
            e.retried = st.fail_own_trials(study, str(e))
            raise
        finally:
            artifacts.sweep_leftovers(study, ctx.artifact_dir)  # uploads a kill cut short, their trials now ended

    def confirm(self, *, trials: list[int] | None = None, all_trials: bool = False, seeds: int = 5,
                on_line: Message = lambda line: None) -> "Confirmation":
        """Repeat this study's chosen trials with other seeds (``confirm_study``)."""
        return confirm_study(self.study_name, self.url, trials=trials, all_trials=all_trials, seeds=seeds,
                             cache_dir=self.cache_dir, debug=self.debug, on_line=on_line)

    # ------------------------------------------------------------ features

    def _ensure_features(self, fingerprint: str) -> dict[str, Any]:
        c, w = self.config, self.resolved_weights
        entries = [(key, self._builder("search.features.feature_cache:extract_job",
                                       feature_cache.job_spec(c, self.weights_by_set[s], self.location), "features",
                                       key, self.weights_by_set[s]))
                   for s, key in self.cache_keys.items()]
        views_key = None
        if "views" in augment.modes_used(c):
            views_key = augment.view_key(c, w, fingerprint, self.runtime)
            entries.append((views_key, self._builder("search.features.feature_cache:extract_views_job",
                                                     augment.views_job_spec(c, w, self.location),
                                                     f"{c.augmentation.views} augmented views", views_key, w)))
        for entry, build in entries:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                feature_cache.ensure_cached(self.cache_dir, entry, build)
            for w_ in caught:
                self.on_message(f"warning: {w_.message}")
        return augment.extra_spec(c, views_key=views_key, weights=w, fingerprint=fingerprint,
                                  data_dir=self.location)

    def _builder(self, target: str, spec: dict[str, Any], what: str, entry: str,
                 w: backbones.Weights) -> Callable[[Path], None]:
        def build(tmp: Path) -> None:
            views = int(spec.get("views", {}).get("views", 1))
            images = self.load_data().n_images * views
            self.on_message(f"extracting {what} of {images:,} images with {w.backbone} at {w.input_size} px: about "
                            f"{_minutes(backbones.extraction_estimate_s(w.backbone, w.input_size, images))} on 2 "
                            f"cores (estimated from ResNet50's measured rate, scaled by FLOPs and pixels)")
            start = time.perf_counter()
            outcome = isolate.run_isolated(target, {**spec, "out_dir": str(tmp)}, self.on_event,
                                           echo_stderr=self.debug, env={"KERAS_BACKEND": extraction_backend()})
            wall_s = time.perf_counter() - start
            self._state.setdefault("extractions", []).append(
                {"entry": entry, "what": what, "images": images, "wall_s": wall_s,
                 "peak_memory_mb": outcome.peak_memory_mb})
            self.on_message(f"{what} cached in {self.cache_dir / entry} (extraction "
                            f"{wall_s:.1f} s, peak memory {outcome.peak_memory_mb:.0f} MB)")
            measured = outcome.result.get("spread")
            if measured is not None and measured < backbones.COLLAPSED_SPREAD:
                self.on_message(f"warning: the features of {w.backbone} ({w.identity}) at {w.input_size} px carry no "
                                f"information (their spread across images is {measured:.2g}): use other weights "
                                f"(imagenet), a ResNet-family backbone, or a larger input_size")
        return build


def _minutes(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.0f} min"


def _check_user_classes(config: StudyConfig, pooled: datasets.Pooled, names: tuple[str, ...]) -> None:
    try:
        config.check_classes(len(names), pooled.source)
    except FieldError as e:
        raise ConfigError(f"study {config.name}: {'.'.join(map(str, e.loc))}: {e.msg}") from None
    datasets.check_class_sizes(pooled, names, config.min_class_images())


def default_study_name(config_name: str, weights: str | None) -> str:
    """The config name; with other weights named, a suffix, so results of other weights never share a study."""
    if weights is None:
        return config_name
    if weights in ("imagenet", "random"):
        return f"{config_name}-{weights}"
    return f"{config_name}-{safe_name(Path(weights).stem)}"


def run_trial(spec: TrialSpec, *, backend: str | None = None, timeout: float | None = None,
              on_event: Callable[[Event], None] = lambda event: None, debug: bool = False) -> dict[str, Any]:
    """One trial of ``spec`` (``Search.trial_spec``) in a fresh process, with no storage: its measures."""
    env = {"KERAS_BACKEND": augment.trial_backend(spec, resolve_backend(backend))}
    outcome = isolate.run_isolated(objective.TRIAL_TARGET, spec.as_dict(), on_event, env=env, echo_stderr=debug,
                                   timeout=timeout)
    return objective.measures(outcome)


# ---------------------------------------------------------------- confirming trials with other seeds

# What of a study's recorded runtime its repeats' times depend on (the extraction's backend matters only for the
# cache, which is verified apart).
TIMED_RUNTIME = ("keras", "train_steps_per_call")


@dataclass(frozen=True)
class Confirmation:
    """The repeats of a study's trials with other seeds, as ``confirm_study`` stored and summarized them."""

    study_name: str
    metric_names: list[str]
    summary: dict[str, Any]   # search.study.repeats.confirmed: per trial and measure, mean, std and 95% interval


def confirm_study(study_name: str, storage: str | None = None, *, trials: list[int] | None = None,
            all_trials: bool = False, seeds: int = 5, cache_dir: Path | None = None, debug: bool = False,
            on_line: Message = lambda line: None) -> Confirmation:
    """Repeat chosen COMPLETE trials (``trials``, else every one with ``all_trials``, else the Pareto set) with
    seeds ``study seed + 1 .. + seeds``, each in its own process; store every run (search.study.repeats) and return
    their summary.  The study's trials, what the sampler saw, are not changed."""
    check_study_name(study_name, "--study")
    if not 0 < seeds <= 100:
        raise UsageError(f"--seeds: must be 1-100, got {seeds}")
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    study = sto.load_study(sto.open_existing(sto.storage_url(storage)), study_name)
    ctx, runtime = _recorded_context(study, Path(cache_dir or feature_cache.default_cache_dir()).resolve(), debug)
    config = ctx.config
    for t in _choose(study, trials, all_trials):
        # A trial stored before a setting was searchable lacks it: the config's value, as it ran with.
        params = objective.resolve_params(config, t.user_attrs["resolved_params"])
        backend = t.user_attrs.get("keras_backend") or runtime["trial_backend"]
        for seed in [config.training.seed + i for i in range(1, seeds + 1)]:
            spec = objective.trial_spec(ctx, params).replace(seed=seed)
            try:
                outcome = isolate.run_isolated(objective.TRIAL_TARGET, spec.as_dict(), env={"KERAS_BACKEND": backend},
                                               echo_stderr=debug)
            except TrialFailed as e:
                repeats.store_run(study, t.number, seed, t.params, None, error=str(e))
                on_line(f"trial {t.number} seed {seed}: FAILED: {e}")
                continue
            result = objective.measures(outcome)
            repeats.store_run(study, t.number, seed, t.params, result)
            on_line(f"trial {t.number} seed {seed}: " + ", ".join(f"{m}={result[m]:.4g}" for m in config.metric_names))
    return Confirmation(study.study_name, list(config.metric_names), repeats.confirmed(study.user_attrs))


def _recorded_context(study: optuna.Study, cache_dir: Path, debug: bool) -> tuple[objective.Context, dict]:
    """The trials' context from what the study recorded (config, identity), its feature caches verified."""
    stored, ident = study.user_attrs.get(st.CONFIG_ATTR), study.user_attrs.get(st.IDENTITY_ATTR)
    if not stored or not ident:
        raise UsageError(f"--study: study {study.study_name!r} was not created by search.run")
    config = StudyConfig.model_validate(stored)
    runtime = ident.get("runtime") or runtime_identity("tensorflow")
    _check_runtime(study.study_name, runtime)
    fingerprint = ident["data_fingerprint"]
    recorded = _recorded_weights(config, ident)
    keys = {s: feature_cache.study_key(config, w, fingerprint, runtime) for s, w in recorded.items()}
    key, weights = next(iter(keys.values())), next(iter(recorded.values()))
    # Augmented trials also need the view cache (views) or the images and the real weights (online).
    modes = augment.modes_used(config)
    views_key = augment.view_key(config, weights, fingerprint, runtime) if "views" in modes else None
    for entry in filter(None, (*keys.values(), views_key)):
        try:
            feature_cache.FeatureStore(cache_dir, entry).verify_all()
        except SearchError as e:
            raise DataError(f"features of study {study.study_name!r} are not usable in {cache_dir} ({entry}): {e}; "
                            f"run search.run for it with the same --cache-dir first") from None
    b = config.backbone
    online_weights = backbones.resolve_weights(b.weights, b.name, b.input_size) if "online" in modes else weights
    extra = augment.extra_spec(config, views_key=views_key, weights=online_weights, fingerprint=fingerprint,
                               data_dir=datasets.location(config.dataset.name, config.dataset.path, None))
    names = tuple(study.user_attrs.get("search:data", {}).get("class_names") or
                  DATASETS[config.dataset.name].class_names)
    ctx = objective.Context(config=config, cache_dir=cache_dir, cache_key=key, n_classes=len(names),
                            class_names=names, target=0, debug=debug, extra_spec=extra, cache_keys=keys)
    return ctx, runtime


def _recorded_weights(config: StudyConfig, ident: dict[str, Any]) -> dict[str, backbones.Weights]:
    """Per "backbone@input_size" the weights a study recorded (by identity only: the caches are keyed by it)."""
    by_set = ident["backbone"].get("weights_by_set") or {f"{n}@{s}": ident["backbone"]["weights"]
                                                         for n, s in config.feature_sets()}
    out = {}
    for k, identity in by_set.items():
        name, size = k.rsplit("@", 1)
        out[k] = backbones.Weights("recorded", None, identity, name, int(size))
    return out


def _check_runtime(study_name: str, runtime: dict[str, str]) -> None:
    """Refuse repeats timed on another runtime than the study's trials: they would sit next to them as equals."""
    backend = runtime.get("trial_backend", "tensorflow")
    fields = (*TIMED_RUNTIME, backend)
    now = runtime_identity(backend)
    diffs = differences({"runtime": {k: runtime[k] for k in fields if k in runtime}},
                        {"runtime": {k: now[k] for k in fields if k in now}})
    if diffs:
        raise DriftError(f"study {study_name!r} was measured on another runtime ({'; '.join(diffs)}): repeats "
                         f"timed here would not compare with its trials; confirm it where it was run")


def _choose(study: optuna.Study, trials: list[int] | None, all_trials: bool) -> list[Any]:
    complete = {t.number: t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))}
    if trials is not None:
        missing = [n for n in trials if n not in complete]
        if missing or not trials:
            raise UsageError(f"--trials: not COMPLETE trials of {study.study_name!r}: {missing or trials!r}; "
                             f"COMPLETE: {sorted(complete) or '(none)'}")
        return [complete[n] for n in trials]
    chosen = sorted(complete.values() if all_trials else study.best_trials, key=lambda t: t.number)
    if not chosen:
        raise UsageError(f"--study: study {study.study_name!r} has no (feasible) COMPLETE trials to confirm")
    return chosen
