"""Networks shared by all algorithms. `model=` configs are partials completed with env dims."""
