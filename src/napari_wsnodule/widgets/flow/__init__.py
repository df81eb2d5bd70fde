"""The flow-guidance dock widget (:mod:`.dock`) and its panels: input, models, guidance, mask; results."""
