from .chunked import evaluate_chunked
from .evaluator import (
                        VehicleReidEvaluator,
                        metrics_from_curves,
                        metrics_from_distmat,
                        vehicleid_split,
)
from .rank import evaluate_rank

__all__ = ["VehicleReidEvaluator", "evaluate_chunked", "evaluate_rank", "metrics_from_curves",
           "metrics_from_distmat", "vehicleid_split"]
