"""What every stage records: MLflow runs (one parent per pipeline, a child per stage), the model registry,
and the Prefect events that chain the stages."""
