"""The Model dock widget (:mod:`.dock`) and its panels: device, training, models."""
