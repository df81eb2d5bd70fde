"""Training-free baselines that learned methods are compared against."""
