"""`ftcli sweep`: hyperparameter search with Optuna over ordinary ftcli runs. The study
(`study`: storage, sampler, pruner, retries), the search that runs trials (`search`) and what it
shows (`report`). Other packages use only the names exported here."""

from ftcli.sweeps.search import load_sweep, resume_command, sweep
from ftcli.sweeps.study import metric_of

__all__ = ["load_sweep", "metric_of", "resume_command", "sweep"]
