"""From a trained run to a deployed classifier: the run's pieces and what goes to the Hub
(`artifacts`), calibration and thresholds fitted on validation (`calibrate`), the ONNX export
with its parity check (`onnx_export`), the model card (`card`) and the upload (`push`). Other
packages use only the names exported here."""

from ftcli.deploy.artifacts import TRAINING_FACTS, TrainedRun, locate_run, run_config, upload_plan
from ftcli.deploy.calibrate import Calibrated, calibrate, fit_and_save, print_calibrated
from ftcli.deploy.card import CONFUSION_IMAGE, TrainingFacts, card_text, write_card
from ftcli.deploy.onnx_export import export
from ftcli.deploy.push import push

__all__ = ["CONFUSION_IMAGE", "TRAINING_FACTS", "Calibrated", "TrainedRun", "TrainingFacts", "calibrate", "card_text",
           "export", "fit_and_save", "locate_run", "print_calibrated", "push", "run_config", "upload_plan", "write_card"]
