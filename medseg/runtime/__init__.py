"""Where and how tensors run: the device and its precision (:mod:`.devices`), several processes (:mod:`.distributed`)
and one optimiser step on any of them (:mod:`.steps`)."""
