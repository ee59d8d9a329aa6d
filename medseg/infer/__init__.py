"""Inference: a predictor built once from a trained model (:mod:`.predictor`), the network backends it runs on
(:mod:`.backends`), input checks (:mod:`.checks`), resampling back onto the scan (:mod:`.resampling`), the batch
runner behind ``medseg predict`` (:mod:`.batch`) and ``medseg export`` (:mod:`.export`)."""
