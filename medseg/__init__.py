"""medseg: medical-image segmentation pipelines."""

__version__ = "0.1.0"
