"""What every stage writes into a run folder (``files``), where checkpoints live in it (``layout``) and the
training curves (``plots``). Imports only the base modules, so training, evaluation and the sweep share it."""
