"""The `wsnodule` command line."""
