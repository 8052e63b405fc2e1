"""hparams_search=*_optuna: hydra-optuna-sweeper with

- its sqlite storage directory created first (SQLite cannot create it, and the sweep dir does not exist
  yet when the study is opened);
- a continued study sampled afresh: the sampler is seeded with `sampler.seed + <trials already stored>`.
  A sampler restarts from its seed in every process, so rerunning the same command with the same seed
  would propose the first run's parameters again while TPE is still in its random start-up trials.
  The offset keeps a continuation reproducible (same stored study + same command = same proposals).
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


def stored_trial_count(storage: str, study_name: str) -> int:
    """Trials of `study_name` already in `storage` (0 when the study or the sqlite file does not exist)."""
    import optuna

    if storage.startswith("sqlite:///") and not Path(storage[len("sqlite:///") :]).exists():
        return 0  # do not let optuna create an empty database just to look
    try:
        summaries = optuna.get_all_study_summaries(storage=storage)
    except Exception as err:  # an unreadable storage: let the sweep itself report it
        log.warning(f"could not read Optuna storage {storage}: {err}")
        return 0
    return next((s.n_trials for s in summaries if s.study_name == study_name), 0)


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
        storage = impl.storage
        if isinstance(storage, str) and storage.startswith("sqlite:///"):
            Path(storage[len("sqlite:///") :]).parent.mkdir(parents=True, exist_ok=True)
        sampler_cfg = impl.config.hydra.sweeper.get("sampler") if impl.config is not None else None
        seed = sampler_cfg.get("seed") if sampler_cfg is not None else None
        if isinstance(storage, str) and seed is not None:
            stored = stored_trial_count(storage, impl.study_name)
            if stored:
                impl.sampler = instantiate(sampler_cfg, seed=int(seed) + stored)
                log.info(
                    f"study {impl.study_name} already holds {stored} trials: continuing it with sampler "
                    f"seed {int(seed) + stored} (hydra.sweeper.sampler.seed {seed} + {stored})"
                )
        # Hydra writes "Error executing job with overrides: [...]" to stderr for every failed trial it
        # reads back; the launcher has named each failed job already, and the search ends on one line
        captured = io.StringIO()
        try:
            with contextlib.redirect_stderr(captured):
                return super().sweep(arguments)
        finally:  # everything else written to stderr (e.g. the launcher's one-line refusals) passes on
            sys.stderr.writelines(
                line
                for line in captured.getvalue().splitlines(keepends=True)
                if not line.startswith("Error executing job with overrides:")
            )
