"""``medseg plan``: the dataset fingerprint (:mod:`.fingerprint`) and the pipeline derived from it (:mod:`.planner`)."""
