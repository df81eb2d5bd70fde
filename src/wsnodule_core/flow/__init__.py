"""Training-free guidance of a 3D rectified flow: the generative prior, predictors, guidance, baselines."""
