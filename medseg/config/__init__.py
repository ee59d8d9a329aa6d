"""The pipeline configuration: its schema (:mod:`.schema`) and the reading of pipeline files, presets and overrides
(:mod:`.loading`)."""
