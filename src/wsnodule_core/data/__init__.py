"""Data: LIDC-IDRI and LUNA16 adapters, lung masks, phantoms, nodule insertion and data sets."""
