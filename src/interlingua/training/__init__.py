"""Training of the learned modules: the recipe (``recipe.train``), deterministic batching, the step's
loss, checkpoints, and the metrics log. Modules are imported where used, so ``python -m
interlingua.training.recipe`` loads no module twice."""
