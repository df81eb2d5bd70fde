"""The PW4MedSeg dock widget (:mod:`.dock`) and its panels: annotations, pseudo-label, training, inference."""
