"""Evaluation: metrics and their formulas (`metrics`, with the `evaluate` module `glue_metric`),
pooling a long document's windows (`windows`), the evaluation loop (`loop`), reports and error rows (`reports`), multi-label thresholds
(`thresholds`), `ftcli eval` (`split_eval`) and `ftcli predict` (`predict`). Other packages use
only the names exported here; importing this package loads NumPy, not torch."""

from ftcli.evaluation.loop import EvalResult, run_eval
from ftcli.evaluation.metrics import Metric, evaluate_module, load_metric, metric_keys, metric_name
from ftcli.evaluation.predict import predict
from ftcli.evaluation.reports import per_class_report, write_report
from ftcli.evaluation.split_eval import evaluate_model
from ftcli.evaluation.thresholds import few_positives_warning

__all__ = ["EvalResult", "Metric", "evaluate_model", "evaluate_module", "few_positives_warning", "load_metric", "metric_keys", "metric_name",
           "per_class_report", "predict", "run_eval", "write_report"]
