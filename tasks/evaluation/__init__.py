"""The evaluate stage: test-split metrics of a trained model and the quality gate."""
