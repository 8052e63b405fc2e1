"""Running on clusters: exact resume after a requeue, pre-emption checkpoints, the submitit launchers.

- `resume.ResumeState` (callback): checkpoints carry the minibatch sampler position and the global RNG
  states, so a resumed run continues on the same batches as an uninterrupted one.
- `resume.resume_checkpoint(cfg, run_dir)`: the checkpoint `train` resumes from (a requeued job picks up
  its own run dir's `checkpoints/last.ckpt`).
- `preemption.PreemptionCheckpoint` (callback): the scheduler's warning signal is handled at the next
  step boundary: save `last.ckpt`, then hand the signal to submitit, which requeues the job.
- `warning_signal`: that signal is held from a job's start until the job can act on it (not mid-import).
- `launcher`: Hydra launchers over submitit that wait for every job and report each failure.
"""
