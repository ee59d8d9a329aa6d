"""The train stage: the trainer (:mod:`.trainer`), its loaders (:mod:`.loaders`), schedules (:mod:`.schedules`) and
validation (:mod:`.validation`)."""
