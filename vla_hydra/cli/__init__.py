"""What the entry points (train, eval, collect, report) share: user errors become one line on stderr.

- `entry`: `run_cli` runs an entry point's task (its errors: one `error:` line, exit code 1),
  `exit_with_error` for a refusal before anything runs.
- `job`: the running Hydra job (its config, group choices, command-line overrides, log file).
- `errors`: Hydra's composition and set-up errors as one `error:` line (`one_line_hydra_errors`).
- `overrides`: the command line read for what the user meant (`~` expanded, `--options` and `+key`s
  nothing reads refused with the override meant).
- `interrupts`: Ctrl-C and SIGTERM end a command with one line saying where the run continues from.
- `run_dirs`: an explicit `hydra.run.dir=` / `hydra.sweep.dir=` checked before Hydra writes into it; a
  continued run's earlier config kept.
"""
