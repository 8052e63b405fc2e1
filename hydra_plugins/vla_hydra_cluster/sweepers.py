"""hparams_search=*_optuna: hydra-optuna-sweeper with

- its sqlite storage directory created first (SQLite cannot create it, and the sweep dir does not exist
  yet when the study is opened);
- a continued study sampled afresh: the sampler is seeded with `sampler.seed + <trials already stored>`.
  A sampler restarts from its seed in every process, so rerunning the same command with the same seed
  would propose the first run's parameters again while TPE is still in its random start-up trials.
  The offset keeps a continuation reproducible (same stored study + same command = same proposals);
- failed trials that do not end the search: once a trial of the search has completed, a failed one (a
  diverged run, a bad corner of the search space) is stored as FAIL and the search goes on to n_trials,
  then ends with one line counting the failures (exit 1, like any sweep with a failed job). While no trial
  has completed, a failure is most likely common to every trial (a bad path, a bad fixed value), and the
  search stops on it (the plugin's own behaviour, max_failure_rate 0);
- a study continued only by the command that started it: the study is named after the task alone, so a
  search on another dataset or budget (`data=...`, `trainer.max_steps=...`) would add its trials to the
  same study, and TPE and the best value would mix scores that cannot be compared. The fixed overrides
  are stored with the study and another set is refused in one line.
"""

import contextlib
import io
import logging
import sys
from pathlib import Path

from hydra.utils import instantiate

try:
    from hydra_plugins.hydra_optuna_sweeper.optuna_sweeper import OptunaSweeper as _OptunaSweeper
except ImportError:  # Hydra imports every plugin module at start-up: without the package, no warning there

    class _OptunaSweeper:  # type: ignore[no-redef]
        def __init__(self, *args, **kwargs):
            from vla_hydra.core.exceptions import ConfigError

            raise ConfigError(
                "hparams_search: the Optuna sweeper needs the package hydra-optuna-sweeper "
                "(pip install 'hydra-optuna-sweeper>=1.2' 'optuna<3'; make install installs it)"
            )


log = logging.getLogger(__name__)


class _DropFailedExperimentLines(logging.Filter):
    """The plugin logs "Failed experiment: <error>" for each failed trial, whose line the launcher has
    printed already."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Failed experiment:")


def _stored_study(storage: str, study_name: str):
    """The summary of `study_name` in `storage`; None when the study or the sqlite file does not exist."""
    import optuna

    if storage.startswith("sqlite:///") and not Path(storage[len("sqlite:///") :]).exists():
        return None  # do not let optuna create an empty database just to look
    try:
        summaries = optuna.get_all_study_summaries(storage=storage)
    except Exception as err:  # an unreadable storage: let the sweep itself report it
        log.warning(f"could not read Optuna storage {storage}: {err}")
        return None
    return next((s for s in summaries if s.study_name == study_name), None)


def stored_trial_count(storage: str, study_name: str) -> int:
    """Trials of `study_name` already in `storage` (0 when the study or the sqlite file does not exist)."""
    study = _stored_study(storage, study_name)
    return study.n_trials if study is not None else 0


# the study's user attribute holding the fixed overrides of the command that started it
_FIXED_OVERRIDES = "vla_hydra_fixed_overrides"


def fixed_overrides(arguments: list[str]) -> list[str]:
    """The command's overrides that change what a trial's score means (dataset, budget, algo settings):
    not the search space (sweep overrides), nor where and how many trials run (hydra.*, cluster, paths)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    kept = {}
    for override in OverridesParser.create().parse_overrides(arguments):
        root = override.key_or_group.split(".")[0].split("/")[0]
        if not override.is_sweep_override() and root not in ("hydra", "cluster", "paths"):
            # a key given twice takes its last value (as Hydra composes it): `... trainer.max_steps=30
            # trainer.max_steps=40` was compared as both, and a refusal named "no override" for the study's
            kept.pop(override.key_or_group, None)
            kept[override.key_or_group] = override.input_line
    return sorted(kept.values())


def check_same_study_command(storage: str, study_name: str, fixed: list[str]) -> None:
    """Refuse to add trials to a stored study that another command started (see the module docstring)."""
    from vla_hydra.core.exceptions import ConfigError

    study = _stored_study(storage, study_name)
    stored = study.user_attrs.get(_FIXED_OVERRIDES) if study is not None else None
    if stored is None or stored == fixed:  # a new study, or one stored before the overrides were
        return
    before = " ".join(o for o in stored if o not in fixed) or "no override"
    now = " ".join(o for o in fixed if o not in stored) or "no override"
    raise ConfigError(
        f"hydra.sweeper.study_name={study_name}: the stored study ({storage}) was run with {before} where "
        f"this command has {now}; their scores are not comparable: name a new study "
        "(hydra.sweeper.study_name=<name>) or rerun with the study's overrides"
    )


def record_study_command(storage: str, study_name: str, fixed: list[str]) -> None:
    """Store the fixed overrides with a study that holds none yet (just created)."""
    import optuna

    study = _stored_study(storage, study_name)
    if study is not None and _FIXED_OVERRIDES not in study.user_attrs:
        optuna.load_study(study_name=study_name, storage=storage).set_user_attr(_FIXED_OVERRIDES, fixed)


def check_search_settings(impl) -> None:
    """n_trials / n_jobs below 1 (an empty study's best-trial lookup failed with a traceback; n_jobs=0
    looped forever) and a direction Optuna does not know: one line before the study is opened."""
    from vla_hydra.core.config import check_value
    from vla_hydra.core.exceptions import ConfigError

    check_value("hydra.sweeper.n_trials", impl.n_trials)
    check_value("hydra.sweeper.n_jobs", impl.n_jobs)
    for direction in impl._get_directions():
        if direction not in ("minimize", "maximize"):
            raise ConfigError(f"hydra.sweeper.direction={impl.direction}: expected minimize or maximize")


def _drop_refused_trials(storage: str, study_name: str, stored: int, created: Path | None) -> None:
    """After a refused submission or an interrupted wait: the database this command created is removed if
    it holds nothing else; otherwise this command's trials that never reported are stored as FAIL instead
    of RUNNING."""
    import optuna
    from optuna.trial import TrialState

    study = optuna.load_study(study_name=study_name, storage=storage)
    trials = [t for t in study.get_trials(deepcopy=False) if t.number >= stored]
    if created is not None and not stored and all(t.state == TrialState.RUNNING for t in trials):
        created.unlink(missing_ok=True)
        with contextlib.suppress(OSError):  # its optuna/ dir, if nothing else is in it
            created.parent.rmdir()
        return
    for trial in trials:
        if trial.state == TrialState.RUNNING:
            study._storage.set_trial_state(trial._trial_id, TrialState.FAIL)


class OptunaSweeper(_OptunaSweeper):
    def sweep(self, arguments):
        import optuna

        # optuna's own lines ("A new study created ...") through Hydra's log handlers (console + the sweep's
        # log), not its separate stderr handler
        optuna.logging.disable_default_handler()
        optuna.logging.enable_propagation()
        impl = self.sweeper
        check_settings = getattr(impl.launcher, "check_settings", None)
        if check_settings is not None:  # a refused submission must not leave an empty study database
            check_settings()
        check_search_settings(impl)
        storage = impl.storage
        database = (
            Path(storage[len("sqlite:///") :])
            if isinstance(storage, str) and storage.startswith("sqlite:///")
            else None
        )
        created = database is not None and not database.exists()
        if database is not None:
            database.parent.mkdir(parents=True, exist_ok=True)
        fixed = fixed_overrides(arguments)
        if isinstance(storage, str):
            check_same_study_command(storage, impl.study_name, fixed)
        sampler_cfg = impl.config.hydra.sweeper.get("sampler") if impl.config is not None else None
        seed = sampler_cfg.get("seed") if sampler_cfg is not None else None
        stored = stored_trial_count(storage, impl.study_name) if isinstance(storage, str) else 0
        if isinstance(storage, str) and seed is not None:
            if stored:
                impl.sampler = instantiate(sampler_cfg, seed=int(seed) + stored)
                log.info(
                    f"study {impl.study_name} already holds {stored} trials: continuing it with sampler "
                    f"seed {int(seed) + stored} (hydra.sweeper.sampler.seed {seed} + {stored})"
                )
        failed = self._go_on_after_failed_trials(impl)
        logging.getLogger(type(impl).__module__).addFilter(_DropFailedExperimentLines())
        # Hydra writes "Error executing job with overrides: [...]" to stderr for every failed trial it
        # reads back; the launcher has named each failed job already, and the search ends on one line
        captured = io.StringIO()
        try:
            with contextlib.redirect_stderr(captured):
                super().sweep(arguments)
        except SystemExit as exit_:
            # exit 1 out of a launch is a refused submission (sbatch: no controller, a bad partition), 130 /
            # 143 a wait stopped by Ctrl-C / SIGTERM (the SLURM jobs go on, but their results never reach
            # the study): the asked-for trials would stay RUNNING in the study for good (and a new database
            # would be left behind, its trials counted by the next command's sampler seed)
            if exit_.code in (1, 130, 143) and isinstance(storage, str):
                _drop_refused_trials(storage, impl.study_name, stored, database if created else None)
            raise
        finally:
            if isinstance(storage, str):
                record_study_command(storage, impl.study_name, fixed)
            # everything else written to stderr (e.g. the launcher's one-line refusals) passes on
            sys.stderr.writelines(
                line
                for line in captured.getvalue().splitlines(keepends=True)
                if not line.startswith("Error executing job with overrides:")
            )
        if failed:
            from vla_hydra.cli.entry import exit_with_error

            exit_with_error(
                f"{len(failed)} of {impl.n_trials} trials failed (job{'s' if len(failed) > 1 else ''} "
                f"{', '.join(map(str, failed))}, named above); the best of the others: "
                f"{impl.config.hydra.sweep.dir}/optimization_results.yaml"
            )

    @staticmethod
    def _go_on_after_failed_trials(impl) -> list[int]:
        """Count the trials each batch returns; the plugin stops the search when a batch's failed share
        exceeds max_failure_rate, which is set here before it looks: 0 while no trial has completed, 1
        after. Returns the list the failed job numbers are collected in."""
        from hydra.core.utils import JobStatus

        failed: list[int] = []
        launch = impl.launcher.launch

        def launch_and_count(job_overrides, initial_job_idx):
            returns = launch(job_overrides, initial_job_idx=initial_job_idx)
            failed.extend(
                initial_job_idx + offset
                for offset, ret in enumerate(returns)
                if ret.status != JobStatus.COMPLETED
            )
            # trials launched so far (job numbers count from 0) minus the failed ones: completed
            impl.max_failure_rate = 1.0 if initial_job_idx + len(returns) > len(failed) else 0.0
            return returns

        impl.launcher.launch = launch_and_count
        return failed
