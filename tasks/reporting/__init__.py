"""What a run did and cost: stage telemetry and prices, the run report and its plots, convergence figures,
and a model version's lineage."""
