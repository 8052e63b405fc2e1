"""Environment construction, scripted controllers and evaluation rollouts."""
