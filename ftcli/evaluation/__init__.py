"""Evaluation: metrics and their formulas (`metrics`, with the `evaluate` module `glue_metric`),
pooling a long document's windows (`windows`), the evaluation loop (`loop`), reports and error
rows (`reports`), thresholds (`thresholds`), calibration error and temperature scaling
(`calibration`), what scores rows, PyTorch or an ONNX export (`backends`), `ftcli eval`
(`split_eval`) and `ftcli predict` (`predict`). Other packages use only the names exported here;
importing this package loads NumPy, not torch."""

from ftcli.evaluation.backends import EXPORT_FILE, ONNX_FILE, ExportInfo, OnnxClassifier, find_model_dir, read_export
from ftcli.evaluation.calibration import (CALIBRATION_FILE, DIAGRAM_FILE, Calibration, confidences,
                                          expected_calibration_error, fit_temperature, load_calibration, nll, reliability,
                                          temperature_of)
from ftcli.evaluation.loop import EvalResult, OneProcess, run_eval
from ftcli.evaluation.metrics import Metric, evaluate_module, load_metric, metric_keys, metric_name
from ftcli.evaluation.predict import predict, trained_labels
from ftcli.evaluation.reports import per_class_report, write_report
from ftcli.evaluation.split_eval import evaluate_model
from ftcli.evaluation.thresholds import (THRESHOLD_FILE, Thresholds, decide, few_positives_warning, read_thresholds,
                                         save_thresholds, tune_binary, tune_per_label)
from ftcli.evaluation.windows import pool

__all__ = ["CALIBRATION_FILE", "DIAGRAM_FILE", "EXPORT_FILE", "ONNX_FILE", "THRESHOLD_FILE", "Calibration",
           "EvalResult", "ExportInfo", "Metric", "OneProcess", "OnnxClassifier", "Thresholds", "confidences", "decide",
           "evaluate_model", "evaluate_module", "expected_calibration_error", "few_positives_warning",
           "find_model_dir", "fit_temperature", "load_calibration", "load_metric", "metric_keys", "metric_name", "nll",
           "per_class_report", "pool", "predict", "read_export", "read_thresholds", "reliability", "run_eval",
           "save_thresholds", "temperature_of", "trained_labels", "tune_binary", "tune_per_label", "write_report"]
