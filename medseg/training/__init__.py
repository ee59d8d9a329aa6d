"""The train stage: the trainer (:mod:`.trainer`), the hooks of its loop (:mod:`.hooks`) and its callbacks
(:mod:`.callbacks`), its loaders (:mod:`.loaders`), schedules (:mod:`.schedules`) and validation
(:mod:`.validation`)."""
