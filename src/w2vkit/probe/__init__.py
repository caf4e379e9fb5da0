"""Linear probes over extracted features: tasks, baselines, fitting and scoring."""
