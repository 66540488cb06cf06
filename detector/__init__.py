"""The downstream detector of the closed loop: an adapter around Ultralytics YOLO.

- :mod:`detector.model`: build / save / load YOLO detection models offline.
- :mod:`detector.targets`: labelled image batches and the Ultralytics target format.
- :mod:`detector.losses`: the training loss and its first and second derivatives.
- :mod:`detector.train`: in-memory fine-tuning (inner loop) and Ultralytics' trainer on disk.
- :mod:`detector.evaluate`: mAP with pycocotools.
- :mod:`detector.datasets`: COCO / YOLO readers with validation, and the dataset writer.
"""

import ultralytics.utils.patches as _ultralytics_patches

# Importing Ultralytics replaces PIL.Image.open, process-wide, with a version that tries to
# pip-install pi-heif the first time Pillow cannot identify a file. nerfsim runs offline and
# must report an unreadable image as such, so mark the plugin as already handled: PIL.Image.open
# then behaves as Pillow's own again (HEIF photos are not supported).
_ultralytics_patches._pil_plugins_registered = True
