"""The downstream detector of the closed loop: an adapter around Ultralytics YOLO.

- :mod:`detector.model`: build / save / load YOLO detection models offline.
- :mod:`detector.targets`: labelled image batches and the Ultralytics target format.
- :mod:`detector.losses`: the training loss and its first and second derivatives.
- :mod:`detector.train`: in-memory fine-tuning (inner loop) and Ultralytics' trainer on disk.
- :mod:`detector.evaluate`: mAP with pycocotools.
- :mod:`detector.datasets`: COCO / YOLO readers with validation, and the dataset writer.
"""
