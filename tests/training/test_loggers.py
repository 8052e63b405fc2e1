"""Loggers write real files: CSV, TensorBoard event files, an offline wandb run that never holds the API key."""

from __future__ import annotations

import csv
import os
import re
from pathlib import Path

import pytest
import yaml

from tests.conftest import small_train_config
from vla_hydra.train import train
from vla_hydra.training.loggers import wandb_logged_in

FAKE_KEY = "0123456789abcdef0123456789abcdef01234567"


def test_many_loggers_write_their_files_and_no_api_key(tmp_path, data_dir, monkeypatch):
    monkeypatch.setenv("WANDB_API_KEY", FAKE_KEY)
    monkeypatch.setenv("WANDB_SILENT", "true")
    cfg = small_train_config(tmp_path, data_dir, ["logger=many", "logger.wandb.mode=offline"])
    _, results = train(cfg)
    run = Path(cfg.paths.output_dir)
    with open(run / "csv" / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["eval/return_mean"] for r in rows if r["eval/return_mean"]]
    # the final evaluation (results.json's) at the last update, in every logger
    (final,) = [r for r in rows if r["final/return_mean"]]
    assert int(final["step"]) == results["train_steps"]
    assert float(final["final/return_mean"]) == pytest.approx(results["eval_return_mean"])
    assert float(final["final/normalized_score"]) == pytest.approx(results["normalized_score"])
    # (a second event file: Lightning closed TensorBoard's writer after the fit; TensorBoard reads both)
    events = [path.read_bytes() for path in (run / "tensorboard").rglob("events.out.tfevents.*")]
    assert any(b"final/return_mean" in data for data in events)
    offline_runs = list((run / "wandb").glob("offline-run-*"))
    assert offline_runs and list(offline_runs[0].glob("*.wandb"))
    # the run's config and parameter count in every logger: csv/hparams.yaml, TensorBoard's hparams,
    # wandb's run config (with the run's tags)
    hparams = yaml.safe_load((run / "csv" / "hparams.yaml").read_text())
    assert hparams["algo"]["_target_"] == "vla_hydra.algos.bc.BC" and hparams["seed"] == cfg.seed
    widths = [3, *cfg.model.hidden_dims, 1]  # Pendulum: 3 observations, 1 action
    total = sum((a + 1) * b for a, b in zip(widths[:-1], widths[1:], strict=True))
    assert hparams["parameters"] == {"total": total, "trainable": total}
    assert yaml.safe_load((run / "tensorboard" / "hparams.yaml").read_text())["parameters"]["total"] == total
    wandb_record = next(offline_runs[0].glob("*.wandb")).read_bytes()
    assert b'{"total":%d,' % total in wandb_record and b'"tags":["dev"]' in wandb_record
    for path in run.rglob("*"):
        if path.is_file():
            assert FAKE_KEY.encode() not in path.read_bytes(), f"API key written to {path}"


def test_training_losses_and_evaluations_share_the_update_count_axis(tmp_path, data_dir):
    """Loss rows used to be written at Lightning's batch count (steps 9, 19, ... for a block of 50 updates
    per step) while evaluations were at gradient updates (500, 1000, ...)."""
    import csv

    cfg = small_train_config(
        tmp_path,
        data_dir,
        [
            "trainer.max_steps=1000",
            "algo.updates_per_step=50",
            "trainer.log_every_n_steps=5",
            "eval.every_n_updates=500",
        ],
    )
    train(cfg)
    with open(Path(cfg.paths.output_dir) / "csv" / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    loss_steps = [int(r["step"]) for r in rows if r.get("train/bc_loss")]
    eval_steps = [int(r["step"]) for r in rows if r.get("eval/return_mean")]
    assert loss_steps == [250, 500, 750, 1000]  # every 5 Lightning steps of 50 updates
    assert eval_steps == [0, 500, 1000]


def test_wandb_logger_does_not_pass_the_deprecated_anonymous_setting(tmp_path, monkeypatch):
    """wandb warns on every run that is given `anonymous` (Lightning passes None): noise on stderr."""
    from vla_hydra.training.loggers import wandb_logger

    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    logger = wandb_logger(str(tmp_path), mode="offline")
    assert "anonymous" not in logger._wandb_init and logger._wandb_init["mode"] == "offline"


def test_wandb_login_detection(tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert not wandb_logged_in()
    netrc_file = tmp_path / ".netrc"
    netrc_file.write_text(f"machine api.wandb.ai\n  login user\n  password {FAKE_KEY}\n")
    os.chmod(netrc_file, 0o600)
    assert wandb_logged_in()


def test_terminal_run_shows_progress_bar_with_updates_and_eval_return(tmp_path, data_dir):
    """Under a pseudo-terminal (`script`) the rich bar shows updates, updates/s and the eval return, and what
    a terminal shows at the end (pyte replays the output) is each log line once and whole above one bar.
    The log handler used to write past rich's redirect: each log line left a stale copy of the bar on the
    screen, a wrapped line lost its end under the redrawn bar, and "`Trainer.fit` stopped" was erased."""
    import os
    import shutil
    import subprocess
    import sys

    import pyte

    if shutil.which("script") is None:
        pytest.skip("needs util-linux `script` to provide a pseudo-terminal")
    command = (
        f"{sys.executable} -m vla_hydra.train trainer.max_steps=200 eval.every_n_updates=100 "
        f"eval.episodes=2 callbacks.policy_eval.episodes=2 paths.data_dir={data_dir} "
        f"hydra.run.dir={tmp_path}/run"
    )
    width = 100
    proc = subprocess.run(
        ["script", "-q", "-e", "-c", command, "/dev/null"],
        capture_output=True,
        timeout=300,
        cwd=Path(__file__).resolve().parents[2],
        env={**os.environ, "COLUMNS": str(width), "LINES": "40"},
    )
    stdout = proc.stdout.decode(errors="replace")
    assert proc.returncode == 0, stdout[-2000:]
    # the bar counts updates (200), not blocks of 50 against data.steps_per_epoch (it showed "4/100")
    for text in ["updates", "updates/s", "eval_return", "200/200"]:
        assert text in stdout, text
    assert "4/100" not in stdout and "Epoch" not in stdout

    screen = pyte.HistoryScreen(width, 40, history=1000)
    screen.set_mode(pyte.modes.LNM)  # the pty turned "\n" into "\r\n"; keep a bare "\n" a new line too
    pyte.ByteStream(screen).feed(proc.stdout)
    rows = [("".join(row[x].data for x in range(width))) for row in screen.history.top] + screen.display
    shown = " ".join(row.strip() for row in rows if row.strip())  # wrapped lines joined again
    for step in (0, 100, 200):
        assert shown.count(f"step {step}/200: eval return") == 1, shown
    assert re.search(r"step 200/200: eval return -?[\d.]+ ± [\d.]+ \(normalized -?[\d.]+\)", shown), shown
    assert "`Trainer.fit` stopped: `max_steps=200` reached." in shown, shown
    assert sum(row.lstrip().startswith("updates ━") for row in rows) == 1, "\n".join(rows)


def test_a_misspelt_or_unusable_wandb_mode_is_refused_in_one_line(tmp_path):
    """logger.wandb.mode=offlne used to mean online (anything but "offline" did): a logged-in user's typo
    uploaded the run, and without credentials it ended in a 46-line wandb traceback."""
    from tests.conftest import run_module

    home = tmp_path / "home"  # no ~/.netrc, no WANDB_API_KEY: not logged in
    home.mkdir()
    env = {"HOME": str(home), "WANDB_API_KEY": ""}
    common = ["logger=wandb", "trainer.max_steps=5", f"hydra.run.dir={tmp_path}/run"]
    typo = run_module("vla_hydra.train", *common, "logger.wandb.mode=offlne", env=env, timeout=300)
    assert typo.returncode == 1
    assert typo.stderr.strip().splitlines() == [
        "error: logger.wandb.mode=offlne: expected one of auto, online, offline, disabled"
    ]
    online = run_module("vla_hydra.train", *common, "logger.wandb.mode=online", env=env, timeout=300)
    assert online.returncode == 1
    assert (
        online.stderr.strip()
        .splitlines()[-1]
        .startswith("error: logger.wandb.mode=online: no wandb credentials on this machine")
    )


def test_wandb_mode_disabled_trains_without_wandb_files(tmp_path, data_dir):
    cfg = small_train_config(tmp_path, data_dir, ["logger=wandb", "logger.wandb.mode=disabled"])
    _, results = train(cfg)
    assert results["train_steps"] == 200
    assert not list((Path(cfg.paths.output_dir) / "wandb").glob("*run-*"))


def test_an_offline_wandb_run_after_a_disabled_one_in_the_same_process_needs_no_login(
    tmp_path, data_dir, monkeypatch
):
    """A local sweep `logger.wandb.mode=disabled,offline`: the offline job failed with "No API key
    configured" (Lightning signals offline through WANDB_MODE, which wandb had already read)."""
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    for mode in ("disabled", "offline"):
        cfg = small_train_config(
            tmp_path / mode, data_dir, ["logger=wandb", f"logger.wandb.mode={mode}", "trainer.max_steps=50"]
        )
        train(cfg)
    assert "WANDB_MODE" not in os.environ  # no mode left behind for the process's later runs
    assert list((Path(cfg.paths.output_dir) / "wandb").glob("offline-run-*/*.wandb"))


def test_each_run_of_one_process_gets_its_own_wandb_run(tmp_path, data_dir, monkeypatch):
    """The jobs of a local sweep share a process: the second used to log into the first one's wandb run
    (wandb.init reused the open run), leaving its own run dir without one."""
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    run_ids = []
    for seed in (0, 1):
        cfg = small_train_config(
            tmp_path / str(seed), data_dir, ["logger=wandb", "logger.wandb.mode=offline", f"seed={seed}"]
        )
        train(cfg)
        runs = list((Path(cfg.paths.output_dir) / "wandb").glob("offline-run-*"))
        assert len(runs) == 1, f"seed {seed}: {runs}"
        run_ids.append(runs[0].name.rsplit("-", 1)[-1])
    assert run_ids[0] != run_ids[1]


def test_a_run_continued_in_its_own_dir_logs_to_the_same_wandb_run(tmp_path, data_dir, monkeypatch):
    """A SLURM requeue or a `ckpt_path=` continuation in the run's own dir made a new wandb run per leg,
    splitting one training curve over several runs; a new run dir still gets a run of its own."""
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    wandb = ["logger=wandb", "logger.wandb.mode=offline", "callbacks.policy_eval=null"]
    first = small_train_config(tmp_path, data_dir, [*wandb, "trainer.max_steps=50"])
    train(first)
    run = Path(first.paths.output_dir)
    continued = small_train_config(
        tmp_path,
        data_dir,
        [*wandb, "trainer.max_steps=100", f"ckpt_path={run / 'checkpoints' / 'last.ckpt'}"],
    )
    _, results = train(continued)
    assert results["train_steps"] == 100

    def run_id(folder: Path) -> str:  # offline-run-<time>-<id>, + -<n> when two legs start in one second
        return re.fullmatch(r"offline-run-\d{8}_\d{6}-([a-z0-9]+)(-\d+)?", folder.name).group(1)

    legs = sorted((run / "wandb").glob("offline-run-*"))
    assert len(legs) == 2 and run_id(legs[0]) == run_id(legs[1])
    other = small_train_config(tmp_path / "other", data_dir, [*wandb, "trainer.max_steps=50"])
    train(other)
    (other_leg,) = (Path(other.paths.output_dir) / "wandb").glob("offline-run-*")
    assert run_id(other_leg) != run_id(legs[0])


def test_the_earlier_wandb_run_id_is_read_from_wandb_s_folder_names(tmp_path):
    """wandb names a run's folder [offline-]run-<time>-<id>, with -<n> added when a folder of that second
    exists (two legs started within one second): the id is not the -<n>."""
    from vla_hydra.training.loggers import earlier_wandb_run_id

    assert earlier_wandb_run_id(tmp_path) is None
    for name in [
        "run-20261128_010000-aaa1",
        "offline-run-20261128_020000-bbb2",
        "offline-run-20261128_020000-bbb2-1",
    ]:
        (tmp_path / "wandb" / name).mkdir(parents=True)
    (tmp_path / "wandb" / "latest-run").symlink_to(tmp_path / "wandb" / "run-20261128_010000-aaa1")
    assert earlier_wandb_run_id(tmp_path) == "bbb2"


def _tensorboard_hparams_tab(logdir: Path):
    """What TensorBoard's HParams tab shows for `logdir`: the experiment (hyper-parameter and metric
    columns) and the session groups (rows), from TensorBoard's own hparams backend."""
    from tensorboard import context
    from tensorboard.backend.event_processing import data_provider, plugin_event_multiplexer
    from tensorboard.plugins import base_plugin
    from tensorboard.plugins.hparams import api_pb2, backend_context, get_experiment, list_session_groups

    multiplexer = plugin_event_multiplexer.EventMultiplexer()
    multiplexer.AddRunsFromDirectory(str(logdir))
    multiplexer.Reload()
    provider = data_provider.MultiplexerDataProvider(multiplexer, str(logdir))
    backend = backend_context.Context(
        base_plugin.TBContext(logdir=str(logdir), multiplexer=multiplexer, data_provider=provider)
    )
    request = context.RequestContext()
    experiment = get_experiment.Handler(request, backend, "", api_pb2.GetExperimentRequest()).run()
    columns = [api_pb2.ColParams(hparam=h.name) for h in experiment.hparam_infos]
    columns += [api_pb2.ColParams(metric=m.name) for m in experiment.metric_infos]
    sessions = api_pb2.ListSessionGroupsRequest(
        start_index=0,
        slice_size=100,
        col_params=columns,
        allowed_statuses=[api_pb2.STATUS_UNKNOWN, api_pb2.STATUS_SUCCESS],
        aggregation_type=api_pb2.AGGREGATION_AVG,
    )
    groups = list_session_groups.Handler(request, backend, "", sessions).run().session_groups
    return experiment, groups


def test_tensorboard_hparams_tab_lists_each_run_of_a_sweep_with_its_settings_and_final_metrics(
    tmp_path, data_dir, monkeypatch
):
    """The HParams tab was empty (hparams.yaml alone): a sweep's runs could not be compared there."""
    from google.protobuf.json_format import MessageToDict
    from hydra.core.hydra_config import HydraConfig
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from vla_hydra.core.config import compose_config

    runs = {}
    for job, (algo, lr) in enumerate([("bc", 0.003), ("td3bc", 0.0003)]):
        lr_key = "algo.lr" if algo == "bc" else "algo.actor_lr"
        overrides = [f"algo={algo}", f"{lr_key}={lr}", f"seed={job}", "logger=tensorboard"]
        overrides += ["trainer.max_steps=20", "eval.every_n_updates=10", "eval.episodes=2"]
        cfg = small_train_config(tmp_path / str(job), data_dir, overrides)
        # the job's Hydra config, as in `python -m vla_hydra.train -m algo=bc,td3bc ...` (its choices)
        HydraConfig.instance().set_config(compose_config("train", overrides, return_hydra_config=True))
        try:
            runs[f"{job}/run/tensorboard"] = (cfg, train(cfg)[1])
        finally:
            HydraConfig.instance().cfg = None

    experiment, groups = _tensorboard_hparams_tab(tmp_path)
    columns = {h.name: h for h in experiment.hparam_infos}
    # every run's settings (BC's algo/lr and TD3+BC's algo/alpha alike), those that differ marked so
    assert {"algo/lr", "algo/actor_lr", "algo/alpha", "choices/algo", "seed", "parameters/total"} <= set(
        columns
    )
    assert columns["choices/algo"].differs and columns["seed"].differs and not columns["env/id"].differs
    # where each run writes is no setting: it would differ in every sweep and head the table
    assert not [name for name in columns if name.startswith(("paths/", "logger/", "choices/hydra"))]
    assert "trainer/default_root_dir" not in columns
    metrics = {m.name.tag for m in experiment.metric_infos}
    assert {"final/return_mean", "final/normalized_score", "eval/return_mean"} <= metrics
    assert "hp_metric" not in metrics
    assert sorted(g.name for g in groups) == sorted(runs)
    for group in groups:
        cfg, results = runs[group.name]
        hparams = MessageToDict(group)["hparams"]
        assert hparams["choices/algo"] == ("bc" if "lr" in cfg.algo else "td3bc")
        assert hparams["choices/data"] == "pendulum_mixed" and "choices/experiment" not in hparams  # unset
        assert hparams["seed"] == cfg.seed
        assert hparams["algo/lr" if "lr" in cfg.algo else "algo/actor_lr"] == pytest.approx(
            cfg.algo.get("lr", cfg.algo.get("actor_lr"))
        )
        values = {m.name.tag: m.value for m in group.metric_values}
        assert values["final/return_mean"] == pytest.approx(results["eval_return_mean"])
        assert values["final/normalized_score"] == pytest.approx(results["normalized_score"])
        assert [s.status for s in group.sessions] == [1]  # STATUS_SUCCESS: the run finished

    # no made-up scalar (Lightning's hp_metric of -1 at step 0): at step 0 only the evaluation before
    # training, with the values results.json records
    cfg, results = runs["0/run/tensorboard"]
    events = EventAccumulator(str(tmp_path / "0" / "run" / "tensorboard"))
    events.Reload()
    at_step_0 = {tag: s.value for tag in events.Tags()["scalars"] for s in events.Scalars(tag) if s.step == 0}
    first_eval = {k: v for k, v in results["eval_history"][0].items() if k != "step"}
    assert at_step_0 == pytest.approx(first_eval)


def test_the_optimized_metric_is_logged_where_the_final_evaluation_does_not_hold_it(tmp_path, data_dir):
    """optimized_metric names a results.json field; the HParams tab lists it when a scalar holds it."""
    cfg = small_train_config(
        tmp_path, data_dir, ["optimized_metric=eval_length_mean", "trainer.max_steps=20", "eval.episodes=2"]
    )
    _, results = train(cfg)
    with open(Path(cfg.paths.output_dir) / "csv" / "metrics.csv") as f:
        (final,) = [row for row in csv.DictReader(f) if row["final/return_mean"]]
    assert (
        float(final["final/eval_length_mean"]) == results["eval_length_mean"] == 200.0
    )  # Pendulum: 200 steps
    assert "final/eval_return_mean" not in final  # the default's field is final/return_mean already


def test_an_offline_wandb_run_says_how_this_cli_sets_the_mode(tmp_path, monkeypatch, caplog):
    """wandb's header advises `wandb online` or WANDB_MODE=online, neither of which changes the mode
    vla_hydra passes to wandb.init: the run says what does, when it chose offline itself (mode=auto)."""
    import logging

    from vla_hydra.training.loggers import wandb_logger

    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc: not logged in
    with caplog.at_level(logging.INFO, logger="vla_hydra.training.loggers"):
        assert wandb_logger(str(tmp_path / "auto"), mode="auto")._wandb_init["mode"] == "offline"
        wandb_logger(str(tmp_path / "chosen"), mode="offline")  # the user's choice: nothing to explain
    assert [r.getMessage() for r in caplog.records] == [
        "wandb runs offline: no credentials on this machine (after `wandb login` or with WANDB_API_KEY runs "
        "upload); logger.wandb.mode sets the mode here, not `wandb online` or WANDB_MODE"
    ]
