"""gm-bench's library: models, estimators, metrics and data (knows nothing of the pipeline)."""
from gm.base import Budget, Extras, GenerativeModel, LogLikelihood
from gm.registry import build, model_class, model_names, register

__all__ = ["Budget", "Extras", "GenerativeModel", "LogLikelihood", "build", "model_class",
           "model_names", "register"]
