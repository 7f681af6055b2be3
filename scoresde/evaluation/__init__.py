"""The evaluation layer: a model spec resolved to a score function, sample-quality metrics,
the solver comparison and its figures.  Builds on the core, the solvers and training."""
