"""Inference: a predictor built once from a trained model (:mod:`.predictor`), the network backends it runs on
(:mod:`.backends`), inferers (:mod:`.inferers`), input checks (:mod:`.checks`), resampling back onto the scan
(:mod:`.resampling`), post-processing (:mod:`.postprocessing`), uncertainty (:mod:`.uncertainty`) and ``medseg export``
(:mod:`.export`; MONAI bundles: :mod:`.bundle`). What is written per case lives in :mod:`medseg.outputs`."""
