"""Self-supervised pretraining: one module per objective, their configs, schedules and registry."""
