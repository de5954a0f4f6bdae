"""The MLflow pyfunc model of a stas-sweep checkpoint, logged *from code* (see :mod:`.mlflow_model`).

MLflow copies this file into the logged model and runs it when the model is loaded
(``mlflow.pyfunc.load_model(uri)``); it rebuilds the network with the project's own loader,
:func:`~stas_sweep.train.trainer.model_from_checkpoint`, which reads the model's ``checkpoint``
artifact with ``torch.load(weights_only=True)``, checks its SHA-256 and builds the model from the
``model_args`` and config stored in it. No pickled object is loaded.

``predict(images)``: images ``[B, C, H, W]`` (frames ``[B, T, C, H, W]`` for event data), float32,
normalised as the model's data set; returns the logits ``[B, classes]``. ``params={"knob": v}``
runs a halting model at knob value ``v`` (epsilon, keep_ratio or exit_threshold) for that call;
by default it runs at the knob it was trained with.
"""

import mlflow
import numpy as np
from mlflow.pyfunc import PythonModel


class STASModel(PythonModel):
    def load_context(self, context) -> None:
        from stas_sweep.train.trainer import model_from_checkpoint

        self.model, _ = model_from_checkpoint(context.artifacts["checkpoint"])
        self.model.eval()

    def predict(self, context, model_input: np.ndarray, params: dict | None = None) -> np.ndarray:
        import torch

        knob = (params or {}).get("knob")
        x = torch.as_tensor(np.asarray(model_input, dtype=np.float32))
        with torch.no_grad():
            return self.model(x, knob=None if knob is None else float(knob)).logits.numpy()


mlflow.models.set_model(STASModel())
