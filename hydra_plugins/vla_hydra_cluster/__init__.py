"""Hydra only accepts launcher classes from the `hydra_plugins` namespace; the logic lives in
`vla_hydra.cluster.launcher`."""
