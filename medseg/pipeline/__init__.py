"""Running a pipeline: the stages in order (:mod:`.run`), cross-validation (:mod:`.crossval`) and the choice between
cross-validated runs (:mod:`.selection`)."""
