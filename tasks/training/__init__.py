"""The train stage: the trainer workload's command line, its MLflow run, and what it produced."""
