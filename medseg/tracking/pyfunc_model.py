"""The file MLflow runs to build the serving model when it loads it ("models from code": no pickle to trust).

It is logged as the model's code by :func:`medseg.tracking.serving.log_serving_model`; medseg itself travels with
the model (``code_paths``), so this import finds the model's own copy.
"""

from mlflow.models import set_model

from medseg.tracking.serving import SegmentationService

set_model(SegmentationService())
