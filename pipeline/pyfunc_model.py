"""The logged pyfunc model's code (MLflow "models from code").

``pipeline.modelpkg.log_poster_model`` logs *this file* as ``python_model``: MLflow copies it into
the model and, on ``mlflow.pyfunc.load_model`` / ``mlflow models serve``, runs it with the model's
``code_paths`` (copies of ``pipeline`` and ``poster_model``) first on ``sys.path``. Nothing is
unpickled: the class is imported from the shipped code and the weights come from ``weights.pt``
with ``torch.load(weights_only=True)`` in ``PosterPyfunc.load_context``. The preprocessing lives
in ``PosterPyfunc.predict`` (pipeline/modelpkg.py).
"""
import mlflow

from pipeline.modelpkg import PosterPyfunc

mlflow.models.set_model(PosterPyfunc())
