"""The logged pyfunc model's code (MLflow "models from code").

``pipeline.artifact.pyfunc.log_poster_model`` logs *this file* as ``python_model``: MLflow copies it
into the model and, on ``mlflow.pyfunc.load_model`` / ``mlflow models serve``, runs it with the
model's ``code_paths`` (``poster_model`` and the ``pipeline`` modules this file reaches,
``pipeline.artifact.pyfunc.served_modules``) first on ``sys.path``. Nothing is unpickled: the class
is imported from the shipped code and the weights come from ``weights.pt`` with
``torch.load(weights_only=True)`` in ``PosterPyfunc.load_context``. The preprocessing lives in
``PosterPyfunc.predict`` (pipeline/artifact/pyfunc.py).
"""
import mlflow

from pipeline.artifact.pyfunc import PosterPyfunc

mlflow.models.set_model(PosterPyfunc())
