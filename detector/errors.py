"""Exceptions of the detector package: each names the file or setting at fault and the problem."""


class DetectorError(ValueError):
    """A detector setting or weights file that cannot be used."""


class DatasetError(DetectorError):
    """A dataset on disk (COCO or YOLO) that is malformed, or data given to the dataset writer."""
