"""GLUE-compatible metrics as an `evaluate` module, shipped inside ftcli.

`evaluate.load("glue", task)` downloads its script from the Hugging Face Hub; this module gives
the same numbers offline and is loaded by path (`ftcli.evaluation.metrics.evaluate_module`). Config names are
GLUE task names (`mrpc`, `cola`, `stsb`, ...) or kinds (`accuracy`, `accuracy_f1`, `multiclass`,
`matthews`, `regression`, and `multilabel` for rows x labels of 0/1). The formulas are ftcli's
own (ftcli.evaluation.metrics); this module only adds what `evaluate` needs around them.
"""

import datasets
import evaluate
import numpy as np

from ftcli.evaluation.metrics import FUNCTIONS, KINDS, MULTILABEL_FUNCTIONS, kind_of

_DESCRIPTION = "GLUE metrics (accuracy, F1, Matthews correlation, Pearson/Spearman), computed offline."
_KWARGS_DESCRIPTION = """
Args:
    predictions: predicted label ids (floats for `regression`/`stsb`).
    references: true label ids (floats for `regression`/`stsb`).
Returns: a dict with the metrics of the config, e.g. {"accuracy": 0.84, "f1": 0.89} for `mrpc`.
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class FtcliGlue(evaluate.Metric):
    def _info(self):
        kind = kind_of(self.config_name)
        value = datasets.Value("float32" if kind == "regression" else "int64")
        if kind == "multilabel":
            value = datasets.Sequence(datasets.Value("int64"))
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="Wang et al., GLUE: A Multi-Task Benchmark and Analysis Platform for NLU, ICLR 2019.",
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({"predictions": value, "references": value}),
            format=None if kind == "multilabel" else "numpy",  # evaluate's numpy format takes scalars only
        )

    def _compute(self, predictions, references):
        kind = kind_of(self.config_name)
        p, r = np.asarray(predictions), np.asarray(references)
        functions = MULTILABEL_FUNCTIONS if kind == "multilabel" else FUNCTIONS
        return {name: functions[name](p, r) for name in KINDS[kind]}
