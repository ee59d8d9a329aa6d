"""What a prediction batch writes per case: the batch runner (:mod:`.batch`, on Ray: :mod:`.ray_engine`), statistics
(:mod:`.statistics`), meshes (:mod:`.meshes`) and pictures (:mod:`.visualize`)."""
