"""What every stage uses: user-facing errors (:mod:`.errors`), atomic writes (:mod:`.atomic`), where outputs go
(:mod:`.layout`) and progress bars (:mod:`.progress`)."""
