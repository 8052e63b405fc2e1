"""Loggers: the CSV logger that continues a resumed run's file, and factories whose behaviour depends on
the user's machine (wandb)."""

from __future__ import annotations

import csv
import netrc
import os
import re
from pathlib import Path

from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.loggers.logger import rank_zero_experiment
from lightning.pytorch.utilities import rank_zero_only


def wandb_logged_in() -> bool:
    """True when wandb has credentials (env var or ~/.netrc). The key itself is never read out."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        return netrc.netrc().authenticators("api.wandb.ai") is not None
    except (FileNotFoundError, netrc.NetrcParseError):
        return False


def finish_wandb_run(failed: bool = False) -> None:
    """End the wandb run this process has open, if any (wandb not imported: none). Without it the next
    job of a local sweep, in the same process, logged into the previous job's run."""
    import sys

    wandb = sys.modules.get("wandb")
    if wandb is not None and getattr(wandb, "run", None) is not None:
        wandb.finish(exit_code=1 if failed else 0)


# results.json's fields that the final evaluation's metrics hold already (as final/return_mean,
# final/return_std, final/episodes, final/normalized_score)
_LOGGED_AS_FINAL = ("eval_return_mean", "eval_return_std", "eval_episodes", "normalized_score")


def log_final_evaluation(
    loggers: list, final, step: int, results: dict | None = None, optimized: str | None = None
) -> None:
    """The final evaluation (eval.episodes, after training) in every logger, at the last update: a wandb
    or TensorBoard user compares runs by it, as results.json does. `optimized` (the run's optimized_metric,
    a results.json field) is logged too, as `final/<field>`, where the evaluation's tags do not hold it.
    TensorBoard's run also gets its hparams session's end (see log_run_config)."""
    metrics = {
        "final/return_mean": final.return_mean,
        "final/return_std": final.return_std,
        "final/episodes": float(len(final.returns)),
    }
    if final.normalized_score is not None:
        metrics["final/normalized_score"] = final.normalized_score
    value = (results or {}).get(optimized) if optimized else None
    if optimized not in _LOGGED_AS_FINAL and isinstance(value, (int, float)) and not isinstance(value, bool):
        metrics[f"final/{optimized}"] = float(value)
    for logger in loggers:
        logger.log_metrics(metrics, step=step)
        if _is_tensorboard(logger):
            _write_hparams_session_end(logger, step)
        logger.save()


def log_run_config(loggers: list, algo) -> None:
    """The composed config in every logger (wandb's run config, TensorBoard's hparams, csv/hparams.yaml), with
    the config-group choices (`choices.algo`, `choices.data`, ...) and the parameter count: runs are
    filtered and grouped by them in wandb or TensorBoard, as lightning-hydra-template and CORL do.
    TensorBoard's run also starts an hparams session, so that its HParams tab lists the run."""
    from vla_hydra.cli.job import hydra_job_config

    hydra_cfg = hydra_job_config()  # None when train() is called from Python: no choices then
    choices = {} if hydra_cfg is None else dict(hydra_cfg.runtime.choices)
    params = {
        **algo.run_config,
        # Hydra's own groups (hydra/launcher, ..., and conf/hydra: its run-dir settings) are no run setting
        "choices": {
            g: choice for g, choice in choices.items() if g != "hydra" and not g.startswith("hydra/")
        },
        "parameters": {
            "total": sum(p.numel() for p in algo.parameters()),
            "trainable": sum(p.numel() for p in algo.parameters() if p.requires_grad),
        },
    }
    for logger in loggers:
        logger.log_hyperparams(params)
        if _is_tensorboard(logger):
            _write_hparams_session_start(logger, params)


# not hyper-parameters: where the run writes (`paths`, each logger's save_dir), which differ from run to run
# and would head TensorBoard's HParams table (it puts the settings that differ between runs first)
_NOT_HPARAMS = ("paths", "logger", "hydra")


def tensorboard_hparams(params: dict) -> dict[str, bool | int | float | str]:
    """The run config as the flat `group/key` hyper-parameters of TensorBoard's HParams tab (`algo/lr`,
    `choices/algo`, `seed`, `parameters/total`): the run's own paths left out (see _NOT_HPARAMS, and a
    setting naming a path in the run dir, e.g. `trainer/default_root_dir`), unset ones too (None: TensorBoard
    leaves the cell empty), lists as their text."""
    from lightning.fabric.utilities.logger import _flatten_dict

    run_dir = str((params.get("paths") or {}).get("output_dir") or "") or None
    flat = _flatten_dict({k: v for k, v in params.items() if k not in _NOT_HPARAMS}, delimiter="/")
    hparams = {}
    for name, value in flat.items():
        in_run_dir = isinstance(value, str) and run_dir and (value + os.sep).startswith(run_dir + os.sep)
        if value is None or in_run_dir:
            continue
        hparams[name] = value if isinstance(value, (bool, int, float, str)) else str(value)
    return hparams


def _is_tensorboard(logger) -> bool:
    from lightning.fabric.loggers import TensorBoardLogger

    return isinstance(logger, TensorBoardLogger)


def _hparams_summary(tag: str, **plugin_data):
    """A summary of TensorBoard's hparams plugin (what its own summary_v2 writes, which needs TensorFlow)."""
    from tensorboard.compat.proto.summary_pb2 import Summary
    from tensorboard.plugins.hparams import metadata
    from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData

    summary_metadata = metadata.create_summary_metadata(HParamsPluginData(**plugin_data))
    return Summary(value=[Summary.Value(tag=tag, metadata=summary_metadata, tensor=metadata.NULL_TENSOR)])


@rank_zero_only
def _write_hparams_session_start(logger, params: dict) -> None:
    """The run's hyper-parameters as an hparams session start in TensorBoard's run: the HParams tab lists
    each run of a sweep with them, and with the last value of each scalar the run logs (final/return_mean,
    final/normalized_score, ...) as its metrics. No experiment summary: TensorBoard takes the first one it
    finds for the whole logdir, so a sweep over algo=bc,td3bc would show BC's settings alone; without one
    it builds the table from all sessions' hyper-parameters and scalar tags. Lightning's own hparams summary
    (default_hp_metric) is not used: it logs a made-up `hp_metric` of -1 at step 0."""
    import time

    from tensorboard.plugins.hparams import metadata
    from tensorboard.plugins.hparams.plugin_data_pb2 import SessionStartInfo

    start = SessionStartInfo(start_time_secs=time.time())
    for name, value in tensorboard_hparams(params).items():
        if isinstance(value, bool):
            start.hparams[name].bool_value = value
        elif isinstance(value, (int, float)):
            start.hparams[name].number_value = value
        else:
            start.hparams[name].string_value = value
    summary = _hparams_summary(metadata.SESSION_START_INFO_TAG, session_start_info=start)
    logger.experiment._get_file_writer().add_summary(summary, 0)


@rank_zero_only
def _write_hparams_session_end(logger, step: int) -> None:
    """The run finished (the HParams tab's status and end time); a run stopped before its final evaluation
    has none."""
    import time

    from tensorboard.plugins.hparams import api_pb2, metadata
    from tensorboard.plugins.hparams.plugin_data_pb2 import SessionEndInfo

    end = SessionEndInfo(status=api_pb2.STATUS_SUCCESS, end_time_secs=time.time())
    summary = _hparams_summary(metadata.SESSION_END_INFO_TAG, session_end_info=end)
    logger.experiment._get_file_writer().add_summary(summary, step)


def earlier_wandb_run_id(save_dir: str | os.PathLike) -> str | None:
    """The id of the latest wandb run already in `save_dir` (wandb names its folders
    `[offline-]run-<YYYYMMDD_HHMMSS>-<id>`), None in a new run dir."""
    # a folder whose name is taken (two legs started in the same second) gets a `-<n>` suffix
    pattern = re.compile(r"(?:offline-)?run-(\d{8}_\d{6})-([a-z0-9]+)(?:-(\d+))?")
    folder = Path(save_dir) / "wandb"
    runs = [m for path in folder.iterdir() if (m := pattern.fullmatch(path.name))] if folder.is_dir() else []
    latest = max(runs, key=lambda m: (m.group(1), int(m.group(3) or 0)), default=None)
    return latest.group(2) if latest else None


WANDB_MODES = ("auto", "online", "offline", "disabled")


def wandb_logger(
    save_dir: str, project: str = "vla_hydra", name: str | None = None, mode: str = "auto", **kwargs
):
    """WandbLogger that runs offline unless the user has logged in (mode=auto); mode=online|offline forces
    it, mode=disabled turns wandb off. Anything else is refused: a misspelt "offline" must not upload."""
    from lightning.pytorch.loggers import WandbLogger

    from vla_hydra.core.exceptions import ConfigError

    if mode not in WANDB_MODES:
        raise ConfigError(f"logger.wandb.mode={mode}: expected one of {', '.join(WANDB_MODES)}")
    if mode == "auto":
        mode = "online" if wandb_logged_in() else "offline"
        if mode == "offline":
            from vla_hydra.core.logging import get_logger

            # wandb's own header then says "Run `wandb online` or set WANDB_MODE=online": neither changes a
            # mode given to wandb.init, as this one is
            get_logger(__name__).info(
                "wandb runs offline: no credentials on this machine (after `wandb login` or with WANDB_API_KEY "
                "runs upload); logger.wandb.mode sets the mode here, not `wandb online` or WANDB_MODE"
            )
    elif mode == "online" and not wandb_logged_in():
        raise ConfigError(
            "logger.wandb.mode=online: no wandb credentials on this machine (run `wandb login` or set "
            "WANDB_API_KEY), or use logger.wandb.mode=offline"
        )
    if mode in ("offline", "disabled"):
        # passed to wandb.init itself, not as Lightning's offline=True: that sets WANDB_MODE=dryrun in the
        # process environment, which wandb reads only when it first sets up, so after an earlier run of the
        # process (a local sweep's job with mode=disabled) the offline run asked for a login instead
        kwargs["mode"] = mode
    Path(save_dir).mkdir(parents=True, exist_ok=True)
    earlier_id = earlier_wandb_run_id(save_dir)
    if earlier_id and "id" not in kwargs:
        # a run continued in its own dir (SLURM requeue, ckpt_path=): the same wandb run, not one per leg
        # (offline runs of one id are synced into one run by `wandb sync`)
        kwargs.update(id=earlier_id, resume="allow")
    logger = WandbLogger(save_dir=save_dir, project=project, name=name, **kwargs)
    if logger._wandb_init.get("anonymous") is None:
        # Lightning passes anonymous=None, which wandb (>= 0.19) answers with a deprecation warning per run
        logger._wandb_init.pop("anonymous", None)
    return logger


class AppendingExperimentWriter(ExperimentWriter):
    """Lightning's CSV ExperimentWriter, except that an existing metrics.csv is continued, not deleted."""

    def _check_log_dir_exists(self) -> None:
        if self._fs.isfile(self.metrics_file_path):
            with self._fs.open(self.metrics_file_path, "r", newline="") as file:
                # the existing header (Lightning writes it sorted): new rows are appended under it
                self.metrics_keys = list(next(csv.reader(file), []))


class ResumableCSVLogger(CSVLogger):
    """Lightning's CSVLogger whose metrics.csv survives a run continued in its own run dir (ckpt_path=
    with the same hydra.run.dir, or a requeued SLURM job): Lightning's deletes the earlier rows; this one
    appends the continued run's rows, so the file holds the whole learning curve."""

    @property
    @rank_zero_experiment
    def experiment(self) -> AppendingExperimentWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = AppendingExperimentWriter(log_dir=self.log_dir)
        return self._experiment
