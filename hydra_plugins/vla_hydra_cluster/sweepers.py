"""hparams_search=*_optuna: hydra-optuna-sweeper with its sqlite storage directory created first (SQLite
cannot create it, and the sweep dir does not exist yet when the study is opened)."""

from pathlib import Path

from hydra_plugins.hydra_optuna_sweeper.optuna_sweeper import OptunaSweeper as _OptunaSweeper


class OptunaSweeper(_OptunaSweeper):
    def sweep(self, arguments):
        storage = self.sweeper.storage
        if isinstance(storage, str) and storage.startswith("sqlite:///"):
            Path(storage[len("sqlite:///") :]).parent.mkdir(parents=True, exist_ok=True)
        return super().sweep(arguments)
