"""PW4MedSeg: probabilistic pseudo-labels from sparse annotations and the probabilistic transformer."""
