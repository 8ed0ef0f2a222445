"""The rollout stage: the serving seam and its local backend, the replayed traffic, the canary analysis."""
