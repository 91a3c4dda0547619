"""The search model as MLflow "model from code": the file ``SearchFlavour`` logs as the model's code, so loading
a registered model runs this line, which imports the installed cmpnas, instead of unpickling an object."""

import mlflow.models

from orchestrator.serving.pyfunc import SearchModel

mlflow.models.set_model(SearchModel())
