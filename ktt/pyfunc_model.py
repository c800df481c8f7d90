"""The logged pyfunc model's entry point (MLflow "models from code"): the file MLflow runs to load
it. KTT's own code travels as one artifact, ``code`` (a zip of ``ktt/`` and ``models/``: one upload
to a tracking server instead of one per file); loading unpacks it and puts it first on the path,
as MLflow does with ``code_paths``, then hands over to :class:`ktt.pyfunc.KTTModel`."""
import mlflow
import pandas as pd


class KTTPyfunc(mlflow.pyfunc.PythonModel):
    def load_context(self, context):
        import atexit
        import shutil
        import sys
        import tempfile
        import zipfile

        folder = tempfile.mkdtemp(prefix="ktt-code-")
        atexit.register(shutil.rmtree, folder, True)  # every load unpacks a copy: none left behind
        with zipfile.ZipFile(context.artifacts["code"]) as z:
            z.extractall(folder)
        sys.path.insert(0, folder)
        from ktt.pyfunc import KTTModel

        self.impl = KTTModel()
        self.impl.load_context(context)

    # the hint (a DataFrame: MLflow infers no schema from it) keeps the logged signature and stops
    # MLflow's "Add type hints" warning at every load
    def predict(self, context, model_input: pd.DataFrame, params: dict | None = None) -> pd.DataFrame:
        return self.impl.predict(context, model_input, params)

    @property
    def model(self):
        """The KTT model (``unwrap_python_model().model``)."""
        return self.impl.model


mlflow.models.set_model(KTTPyfunc())
