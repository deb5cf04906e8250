"""napari-lgg-seg: lower-grade glioma segmentation in brain MRI for napari."""

__version__ = "0.1.0"
