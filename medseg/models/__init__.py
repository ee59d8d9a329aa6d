"""Networks and losses by name (:mod:`.registry`), the networks and losses medseg adds to MONAI's (:mod:`.networks`,
:mod:`.losses`), classical baselines (:mod:`.classical`) and checkpoints (:mod:`.checkpoint`)."""
