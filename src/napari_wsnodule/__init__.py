"""napari plugin of wsnodule."""
