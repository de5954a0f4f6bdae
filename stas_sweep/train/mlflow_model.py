"""A trained model as an MLflow model: logged from its checkpoint, loaded back by URI.

The format is an MLflow ``pyfunc`` model *from code* (:mod:`.pyfunc_model`) whose one artifact is
the checkpoint's weights, ``model_args``, config and data set (optimizer and RNG states left out),
saved by :func:`~.checkpoint.save_checkpoint` with its SHA-256. Loading it, by MLflow
(``mlflow.pyfunc.load_model``) or by ``stas-sweep eval`` / ``energy`` (:func:`load_logged_model`),
goes through the project's loader: ``torch.load(weights_only=True)``, digest checked, the model
rebuilt from its own config. Chosen by trying the PyTorch flavour's two formats (MLflow 3.17,
torch 2.14, the tiny digits model):

* ``pt2`` (``torch.export``): the static model exports (4 s), but an A-SSA model does not,
  packed or not (``GuardOnDataDependentSymNode``: how many tokens still run is data), nor does
  timestep exit; token dropping exports only unpacked, with its keep ratio frozen into the graph.
  An exported graph also has no knob to turn and no modules for the energy meter to count.
* ``pickle``: loading runs pickled code; this project loads weights with ``weights_only=True`` only.

Logging one takes about 0.15-0.4 s on a sqlite store or a local ``mlflow server`` (the first in a
process 1-2.5 s more, importing MLflow's pyfunc; measured on 2 shared cores with the tiny digits
model) and stores the slim checkpoint (240 KB for that model) with ``MLmodel``, the code file and
the requirements, so every finished trial logs its model.
"""

from __future__ import annotations

import tempfile
import warnings
from pathlib import Path

from .. import methods
from ..tracking import TrackingError, resolve_tracking_uri, flatten, global_tracking_uri
from .checkpoint import load_checkpoint, save_checkpoint

CODE = Path(__file__).with_name("pyfunc_model.py")
CHECKPOINT = "checkpoint.pt"
# what the logged checkpoint keeps of a training checkpoint: enough to rebuild and evaluate
KEEP = ("model_args", "model", "epoch", "config", "data", "history")


def model_description(state: dict) -> dict[str, str]:
    """Tags of a logged model: its backbone, halting method (and trained knob), timesteps, data set."""
    args = state["model_args"]
    halting = args.get("halting") or {}
    method = halting.get("method", "stas") if halting else "static"
    tags = {"backbone": str(args["name"]), "method": method, "timesteps": str(args.get("timesteps")),
            "img_size": str(args.get("img_size")), "data": str((state.get("data") or {}).get("name"))}
    knob = methods.knob_of(method) if method in methods.halting_names() else None
    if knob is not None and halting.get(knob) is not None:
        tags[f"trained_{knob}"] = str(halting[knob])
    return tags


def _signature(state: dict):
    """Images ``[B, C, S, S]`` (frames ``[B, T, 2, S, S]`` for event data) -> logits ``[B, classes]``;
    param ``knob`` (a halting model only)."""
    import numpy as np
    from mlflow.models import ModelSignature
    from mlflow.types.schema import ParamSchema, ParamSpec, Schema, TensorSpec

    from ..data.events import EVENT_DATASETS

    a = state["model_args"]
    size = (a["in_channels"], a["img_size"], a["img_size"])
    if (state.get("data") or {}).get("name") in EVENT_DATASETS:
        size = (a["timesteps"], *size)
    params = None
    if a.get("halting"):
        h = a["halting"]
        params = ParamSchema([ParamSpec("knob", "double", float(h.get(methods.knob_of(h.get("method", "stas")), 0.0)))])
    return ModelSignature(inputs=Schema([TensorSpec(np.dtype(np.float32), (-1, *size))]),
                          outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, a["num_classes"]))]),
                          params=params)


def _requirements() -> list[str]:
    from importlib.metadata import PackageNotFoundError, version

    out = []
    for dist in ("stas-sweep", "torch", "spikingjelly", "mlflow"):
        try:
            out.append(f"{dist}=={version(dist)}")
        except PackageNotFoundError:
            out.append(dist)
    return out


def log_checkpoint_model(tracking_uri: str | None, run_id: str, checkpoint: str | Path, *, name: str = "model",
                         step: int = 0) -> str:
    """Log the model of ``checkpoint`` as an MLflow model of run ``run_id``; returns its URI
    (``models:/<model id>``). Its tags: :func:`model_description`; its params: the training config."""
    import mlflow
    from mlflow.entities import LoggedModelOutput
    from mlflow.models import Model

    client = mlflow.MlflowClient(resolve_tracking_uri(tracking_uri))
    state = load_checkpoint(checkpoint)
    run = client.get_run(run_id)
    logged = client.create_logged_model(run.info.experiment_id, name=name, source_run_id=run_id,
                                        tags=model_description(state), model_type="stas-sweep",
                                        params={k: str(v)[:6000] for k, v in flatten(state.get("config") or {}).items()})
    try:
        with tempfile.TemporaryDirectory() as d:
            slim = save_checkpoint({k: state[k] for k in KEEP if k in state}, Path(d) / CHECKPOINT)
            local = Path(d) / "model"
            with warnings.catch_warnings():  # advice for models without a signature or type hints: ours has one
                warnings.filterwarnings("ignore", ".*(Add type hints|An input example was not provided)", UserWarning)
                mlflow.pyfunc.save_model(
                    str(local), python_model=str(CODE), artifacts={"checkpoint": str(slim)},
                    signature=_signature(state), pip_requirements=_requirements(),
                    metadata={"stas_sweep": model_description(state)},
                    mlflow_model=Model(artifact_path=logged.artifact_location, model_uuid=logged.model_id,
                                       run_id=run_id, model_id=logged.model_id))
            client.log_model_artifacts(logged.model_id, str(local))
        client.log_outputs(run_id, [LoggedModelOutput(logged.model_id, step)])
    except BaseException:
        client.finalize_logged_model(logged.model_id, "FAILED")
        raise
    client.finalize_logged_model(logged.model_id, "READY")
    return f"models:/{logged.model_id}"


class ModelURIError(TrackingError):
    """A ``models:/`` or ``runs:/`` URI that names nothing loadable (message says what exists)."""


def is_model_uri(text: str) -> bool:
    return text.startswith(("models:/", "runs:/"))


def resolve_model_uri(uri: str, tracking_uri: str | None = None) -> dict:
    """What a ``models:/NAME/VERSION`` (or ``models:/NAME@alias``, ``models:/<model id>``) or
    ``runs:/RUN_ID`` URI names: ``{"model_uri": the logged model, "tags": the version's or point
    run's tags, "knob": (name, value) or None}``. A point run's URI gives the trial's model at
    the point's knob; a trial run's, its model at no particular knob; a sweep's run, its stage 1."""
    import mlflow
    from mlflow.exceptions import MlflowException

    store = resolve_tracking_uri(tracking_uri)
    client = mlflow.MlflowClient(store)
    rest = uri.split(":/", 1)[1].strip("/")
    try:
        if uri.startswith("runs:/"):
            run_id = rest.split("/")[0]
            tags = client.get_run(run_id).data.tags
            model = tags.get("model_uri") or tags.get("stage1_model_uri")  # a sweep's run: its stage 1
            if not model:
                raise ModelURIError(f"{uri}: run {run_id} in {store} has no logged model (a sweep's trial and point "
                                    f"runs have one, tag model_uri; the sweep's run its stage 1)")
        elif "@" in rest:
            name, alias = rest.split("@", 1)
            version = client.get_model_version_by_alias(name, alias)
            tags, model = version.tags, version.source
        elif "/" in rest:
            name, number = rest.split("/", 1)
            version = client.get_model_version(name, number)
            tags, model = version.tags, version.source
        else:
            client.get_logged_model(rest)
            tags, model = {}, uri
    except MlflowException as e:
        if e.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "NOT_FOUND", "BAD_REQUEST"):
            raise ModelURIError(f"{uri}: not found in {store} ({(str(e).splitlines() or [''])[0][:200]})") from None
        raise
    method = tags.get("method")
    knob = None
    name = methods.knob_of(method) if method in methods.halting_names() else None
    if name is not None and tags.get(name) not in (None, "", "None"):
        knob = (name, float(tags[name]))
    return {"model_uri": model, "tags": dict(tags), "knob": knob}


def load_logged_model(uri: str, tracking_uri: str | None = None, device="cpu"):
    """``(model, state, info)`` of a ``models:/`` or ``runs:/`` URI (:func:`resolve_model_uri`'s
    ``info``): the logged checkpoint downloaded and read by :func:`load_checkpoint`
    (``weights_only=True``, SHA-256 checked), the model built from its own ``model_args``."""
    import mlflow
    from mlflow.models import Model

    from .trainer import model_from_checkpoint

    info = resolve_model_uri(uri, tracking_uri)
    with tempfile.TemporaryDirectory() as d:
        try:
            with global_tracking_uri(resolve_tracking_uri(tracking_uri)):
                local = mlflow.artifacts.download_artifacts(artifact_uri=info["model_uri"], dst_path=d)
            flavor = Model.load(local).flavors.get("python_function", {})
            path = Path(local) / flavor["artifacts"]["checkpoint"]["path"]
        except (KeyError, TypeError, OSError) as e:
            raise ModelURIError(f"{uri}: {info['model_uri']} is not a stas-sweep model ({type(e).__name__}: {e})") \
                from None
        model, state = model_from_checkpoint(path, device)
    return model, state, info


__all__ = ["ModelURIError", "is_model_uri", "load_logged_model", "log_checkpoint_model",
           "model_description", "resolve_model_uri"]
