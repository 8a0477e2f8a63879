"""Training with a distribution: options, the method registry, networks' starting weights
(materialization), the sign constraints, data, the loop, distributed runs and a run's folder."""
