"""Optuna as the search backend: samplers by name, RDB/journal storage, ask/tell, an exact trial budget.

* Samplers: ``nsga2`` (default), ``tpe`` (multi-objective TPE), ``random``, ``nsga3``, ``gp``, or any
  class in ``optuna.samplers`` by its name; all seeded; constraints passed to those that take them, so
  infeasible trials never sit on their fronts.
* Storage: SQLite in the run folder by default; any RDB URL (PostgreSQL, MySQL), or a journal file
  (``journal:///path/file.log``) for several processes on one machine.
* Budget: a trial whose number shows that the budget was already claimed by other workers is discarded
  before it runs, so N workers never overshoot or duplicate.
"""

from __future__ import annotations

import copy
import json
import logging
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import optuna
from optuna.trial import TrialState

from ..errors import ConfigError
from ..records import TrialRecord, TrialStatus
from ..registry import Registry

optuna.logging.set_verbosity(optuna.logging.WARNING)
logging.getLogger("optuna").setLevel(logging.WARNING)


@contextmanager
def _quiet():
    """Optuna's experimental/deprecation notices (heartbeat, constraints_func) are not the user's to act on:
    keep them off stderr, where the CLI promises one line per problem."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        warnings.filterwarnings("ignore", message=".*constraints_func.*", category=FutureWarning)
        warnings.filterwarnings("ignore", message="Heartbeat of storage", category=UserWarning)
        yield

RECORD_ATTR = "record"
CONSTRAINTS_ATTR = "constraints"
DISCARDED_ATTR = "discarded"
REQUEUED_ATTR = "requeued"  # on a trial stopped in flight whose parameters were enqueued again

SAMPLERS: Registry = Registry("sampler")


def _constraints(ft: optuna.trial.FrozenTrial) -> Sequence[float]:
    return ft.user_attrs.get(CONSTRAINTS_ATTR, [])


SAMPLERS.register("nsga2", lambda seed, n, cons: optuna.samplers.NSGAIISampler(
    seed=seed, population_size=max(6, min(50, n // 4)), constraints_func=cons))
SAMPLERS.register("nsga3", lambda seed, n, cons: optuna.samplers.NSGAIIISampler(
    seed=seed, population_size=max(6, min(50, n // 4)), constraints_func=cons))
SAMPLERS.register("tpe", lambda seed, n, cons: optuna.samplers.TPESampler(
    seed=seed, n_startup_trials=max(5, min(10, n // 4)), multivariate=True, constraints_func=cons))
SAMPLERS.register("random", lambda seed, n, cons: optuna.samplers.RandomSampler(seed=seed))
SAMPLERS.register("gp", lambda seed, n, cons: optuna.samplers.GPSampler(seed=seed, constraints_func=cons))


def make_sampler(name: str, seed: int, n_trials: int, with_constraints: bool) -> optuna.samplers.BaseSampler:
    with _quiet():
        return _make_sampler(name, seed, n_trials, with_constraints)


def _make_sampler(name: str, seed: int, n_trials: int, with_constraints: bool) -> optuna.samplers.BaseSampler:
    cons = _constraints if with_constraints else None
    if name in SAMPLERS:
        return SAMPLERS.get(name)(seed, n_trials, cons)
    cls = getattr(optuna.samplers, name, None)
    if isinstance(cls, type) and issubclass(cls, optuna.samplers.BaseSampler):
        try:
            return cls(seed=seed)
        except TypeError:
            return cls()
    SAMPLERS.get(name)  # raises the "did you mean" error
    raise AssertionError("unreachable")


def storage_url(storage: str | None, run_dir: Path) -> str:
    return storage or f"sqlite:///{(run_dir / 'study.db').resolve()}"


def open_storage(url: str, heartbeat: bool = True):
    with _quiet():
        return _open_storage(url, heartbeat)


def _open_storage(url: str, heartbeat: bool):
    try:
        if url.startswith("journal://"):
            from optuna.storages.journal import JournalFileBackend, JournalStorage

            path = url.removeprefix("journal://")
            return JournalStorage(JournalFileBackend(path))
        kwargs: dict[str, Any] = {}
        if heartbeat:
            kwargs.update(heartbeat_interval=30, grace_period=120)
        engine = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {}
        return optuna.storages.RDBStorage(url, engine_kwargs=engine, **kwargs)
    except ImportError as e:
        raise ConfigError(f"storage '{url}' needs a database driver that is not installed ({e}); e.g. `pip install psycopg2-binary` for PostgreSQL") from None
    except Exception as e:  # sqlalchemy errors: bad URL, unreachable server
        raise ConfigError(f"cannot open storage '{url}': {str(e).splitlines()[0]}; check the URL and that the database is reachable") from None


def record_of(ft: optuna.trial.FrozenTrial) -> TrialRecord | None:
    raw = ft.user_attrs.get(RECORD_ATTR)
    if not raw:
        return None
    try:
        return TrialRecord.from_dict(json.loads(raw) if isinstance(raw, str) else raw)
    except (ValueError, KeyError, TypeError):
        return None


@dataclass
class StaleTrials:
    """What :meth:`OptunaBackend.fail_stale` did with the trials a stopped process left running."""

    redone: list[int] = field(default_factory=list)  # enqueued again
    dropped: list[tuple[int, int]] = field(default_factory=list)  # (trial, the trial it redid): interrupted twice


def _redone_of(ft) -> int:
    """The first trial of the retry chain ``ft`` belongs to (``ft.number`` itself if none)."""
    history = ft.system_attrs.get("retry_history") or []
    return history[0] if history else ft.number


def _retry_callback(max_retry: int | None):
    with _quiet():
        cls = getattr(optuna.storages, "RetryHeartbeatStaleTrialCallback", None) or optuna.storages.RetryFailedTrialCallback
        return cls(max_retry=max_retry)


class OptunaBackend:
    """ask/tell over an Optuna study with an exact, shared trial budget."""

    def __init__(self, study: optuna.Study, objectives: Sequence[Any], budget: int, constraints_len: int):
        self.study = study
        self.objectives = list(objectives)
        self.budget = budget
        self.constraints_len = constraints_len

    @classmethod
    def open(cls, *, url: str, study_name: str, objectives, sampler: str, seed: int, budget: int,
             constraints_len: int, create: bool = True) -> "OptunaBackend":
        storage = open_storage(url)
        directions = [o.resolved_direction for o in objectives]
        smp = make_sampler(sampler, seed, budget, constraints_len > 0)
        try:
            if create:
                study = optuna.create_study(storage=storage, study_name=study_name, directions=directions,
                                            sampler=smp, load_if_exists=True)
            else:
                study = optuna.load_study(storage=storage, study_name=study_name, sampler=smp)
        except KeyError:
            names = [s.study_name for s in optuna.get_all_study_summaries(storage)]
            raise ConfigError(f"no study '{study_name}' in {url}; studies there: {', '.join(names) or '(none)'}") from None
        except ValueError as e:
            raise ConfigError(f"study '{study_name}' in {url} does not match this run ({e}); use another --study or --out") from None
        if list(study.directions) and [d.name.lower() for d in study.directions] != directions:
            raise ConfigError(f"study '{study_name}' optimises {[d.name.lower() for d in study.directions]}, this run {directions}; use another --study")
        return cls(study, objectives, budget, constraints_len)

    # ------------------------------------------------------------------ budget
    def _trials(self):
        return self.study.get_trials(deepcopy=False)

    @staticmethod
    def _discarded(ft) -> bool:
        if ft.user_attrs.get(DISCARDED_ATTR):
            return True
        # a FAIL with no record: a killed process's trial, failed by heartbeat or resume
        return ft.state == TrialState.FAIL and RECORD_ATTR not in ft.user_attrs

    def waiting(self) -> int:
        """Enqueued trials not asked yet (seeds, a finishing trial, a mutation)."""
        return len(self.waiting_attrs())

    def waiting_attrs(self) -> list[dict]:
        """The user attributes of the enqueued trials not asked yet, in the order they will be asked."""
        return [dict(t.user_attrs) for t in self._trials() if t.state == TrialState.WAITING]

    def finished(self) -> int:
        return sum(1 for t in self._trials() if RECORD_ATTR in t.user_attrs and not t.user_attrs.get(DISCARDED_ATTR))

    def fail_stale(self, all_running: bool = False, logged: dict[int, tuple[TrialRecord, Sequence[float]]] | None = None) -> "StaleTrials":
        """Fail trials left RUNNING by a dead process (heartbeat), or all RUNNING ones on resume, and enqueue
        each again (same parameters, same seed label) so that it is redone: once (a redo killed again is not).

        ``logged``: records already in the run folder's log, with their constraint values. A RUNNING trial
        found there was killed after its record reached the log but before the database: it is told from
        that record (not failed), so it counts once against the budget and is not run again."""
        for t in self._trials():
            if t.state == TrialState.RUNNING and logged and t.number in logged:
                rec, cons = logged[t.number]
                self.tell(optuna.trial.Trial(self.study, t._trial_id), rec, cons)
        running = {t.number: t for t in self._trials() if t.state == TrialState.RUNNING}
        with _quiet():  # trials of workers whose heartbeat stopped (RDB storages only; a no-op elsewhere)
            optuna.storages.fail_stale_trials(self.study)
        stale = [t for t in self._trials() if t.number in running and t.state == TrialState.FAIL]
        if all_running:
            stale += [t for t in self._trials() if t.state == TrialState.RUNNING]
        out = StaleTrials()
        for t in stale:
            snapshot = running.get(t.number, t)  # as it ran: its parameters and seed label
            first = _redone_of(snapshot)
            if first != snapshot.number:
                out.dropped.append((snapshot.number, first))
            elif self._redo(snapshot, max_retry=1):
                out.redone.append(snapshot.number)
            if t.state == TrialState.RUNNING:
                self.study.tell(t.number, state=TrialState.FAIL)
        return out

    def _redo(self, ft: optuna.trial.FrozenTrial, max_retry: int | None) -> bool:
        """Enqueue a killed trial again with Optuna's own retry callback: its parameters, its user attributes
        (the seed label) and its retry history, up to ``max_retry`` retries. False when it is not enqueued."""
        if any(ft.number in t.system_attrs.get("retry_history", ()) for t in self._trials()):
            return True  # an earlier, interrupted pass of this function enqueued it
        ft = copy.deepcopy(ft)
        ft.user_attrs = self._redo_attrs(ft)
        n = len(self._trials())
        if ft.params:
            _retry_callback(max_retry)(self.study, ft)
        elif "fixed_params" in ft.system_attrs:  # asked but not yet sampled (a seed): as it was enqueued
            self.study.enqueue_trial(ft.system_attrs["fixed_params"], user_attrs=ft.user_attrs, skip_if_exists=False)
        return len(self._trials()) > n

    @staticmethod
    def _redo_attrs(ft) -> dict:
        return {k: v for k, v in ft.user_attrs.items() if k not in (RECORD_ATTR, CONSTRAINTS_ATTR, DISCARDED_ATTR, REQUEUED_ATTR)}

    def requeue(self, trial) -> None:
        """A trial stopped by Ctrl-C: enqueued again (its parameters and seed label; not a retry, the
        candidate did nothing wrong), then discarded."""
        try:
            ft = self.study._storage.get_trial(trial._trial_id)
            params = {**ft.system_attrs.get("fixed_params", {}), **ft.params}
            if params:
                self.study.enqueue_trial(params, user_attrs=self._redo_attrs(ft), skip_if_exists=False)
                trial.set_user_attr(REQUEUED_ATTR, True)
        finally:
            self.discard(trial)

    def ask(self):
        if self.finished() >= self.budget:
            return None
        with _quiet():
            trial = self.study.ask()
        claimed = sum(1 for t in self._trials() if t.number < trial.number and not self._discarded(t))
        if claimed >= self.budget:
            trial.set_user_attr(DISCARDED_ATTR, True)
            self.study.tell(trial, state=TrialState.FAIL)
            return None
        return trial, trial, trial.number

    def discard(self, trial) -> None:
        """A trial that gives no result (a duplicate proposal, one stopped in flight): not counted."""
        try:
            trial.set_user_attr(DISCARDED_ATTR, True)
            self.study.tell(trial, state=TrialState.FAIL)
        except Exception:  # noqa: BLE001 - finished already, or the database is gone (Ctrl-C): left RUNNING,
            pass  # it holds no record, and resume fails it without counting it

    def tell(self, trial, record: TrialRecord, constraints: Sequence[float]) -> None:
        trial.set_user_attr(CONSTRAINTS_ATTR, list(constraints))
        trial.set_user_attr(RECORD_ATTR, json.dumps(record.to_dict(), default=str))
        if record.status == TrialStatus.COMPLETE:
            m = record.metrics
            values = [float(getattr(m, o.name)) for o in self.objectives]
            self.study.tell(trial, values)
        elif record.status == TrialStatus.STOPPED:
            self.study.tell(trial, state=TrialState.PRUNED)
        else:
            self.study.tell(trial, state=TrialState.FAIL)

    def records(self) -> list[TrialRecord]:
        out = []
        for t in self._trials():
            if t.user_attrs.get(DISCARDED_ATTR):
                continue
            r = record_of(t)
            if r is not None:
                out.append(r)
        return out

    def enqueue(self, params_list: Sequence[dict], user_attrs: Sequence[dict] | None = None, *, unique: bool = True,
                first: bool = False) -> None:
        """Enqueue fixed parameter sets (the space's seeds); ``user_attrs[i]`` is set on the trial that runs the i-th.
        ``unique``: skip a set some trial already has (seeds on resume); False for a finishing trial, whose
        parameters ran before (search/finish.py). ``first``: ahead of the trials already waiting (Optuna asks them
        oldest first): each waiting one is claimed, discarded and enqueued again after the new ones, with its
        parameters and attributes (a worker that claims one first runs it, as it would have)."""
        later = self._claim_waiting() if first else []
        for i, p in enumerate(params_list):
            self.study.enqueue_trial(p, user_attrs=user_attrs[i] if user_attrs else None, skip_if_exists=unique)
        for params, attrs in later:
            self.study.enqueue_trial(params, user_attrs=attrs, skip_if_exists=False)

    def _claim_waiting(self) -> list[tuple[dict, dict]]:
        """Take every waiting trial out of the queue: (fixed parameters, user attributes) in their order. A trial is
        claimed the way Optuna's own ask claims it (WAITING -> RUNNING succeeds for one process only), then
        discarded: it does not count against the budget."""
        storage, out = self.study._storage, []
        for t in self._trials():
            if t.state != TrialState.WAITING or not storage.set_trial_state_values(t._trial_id, TrialState.RUNNING):
                continue
            storage.set_trial_user_attr(t._trial_id, DISCARDED_ATTR, True)
            storage.set_trial_state_values(t._trial_id, TrialState.FAIL)
            out.append((dict(t.system_attrs.get("fixed_params", {})), self._redo_attrs(t)))
        return out
