import torch

from detector.targets import ImageBatch, pad_boxes, select_targets, targets_from_boxes


def test_targets_are_normalised_xywh_of_the_kept_boxes_sorted_by_image():
    boxes = torch.tensor(
        [[[0.0, 0.0, 32.0, 16.0], [1.0, 1.0, 2.0, 2.0]], [[16.0, 16.0, 80.0, 48.0], [8.0, 8.0, 24.0, 40.0]]]
    )
    classes = torch.tensor([[1, 0], [0, 2]])
    keep = torch.tensor([[True, False], [True, True]])

    targets = targets_from_boxes(boxes, classes, keep, image_size=64)

    assert targets["batch_idx"].tolist() == [0, 1, 1]
    assert targets["cls"].tolist() == [[1], [0], [2]]
    expected = torch.tensor([[16, 8, 32, 16], [40, 32, 48, 32], [16, 24, 16, 32]]) / 64  # third box clipped at 64
    torch.testing.assert_close(targets["bboxes"], expected)


def test_select_targets_renumbers_in_the_requested_order():
    boxes, classes, keep = pad_boxes(
        [torch.tensor([[0.0, 0, 8, 8]]), torch.zeros(0, 4), torch.tensor([[8.0, 8, 16, 16], [0, 0, 4, 4]])],
        [torch.tensor([0]), torch.zeros(0, dtype=torch.long), torch.tensor([1, 2])],
    )
    assert keep.tolist() == [[True, False], [False, False], [True, True]]
    targets = targets_from_boxes(boxes, classes, keep, image_size=16)

    chosen = select_targets(targets, torch.tensor([2, 1, 0]))

    assert chosen["batch_idx"].tolist() == [0, 0, 2]
    assert chosen["cls"].flatten().tolist() == [1, 2, 0]


def test_image_batch_index_keeps_each_images_boxes_with_it():
    boxes, classes, keep = pad_boxes(
        [torch.tensor([[0.0, 0, 8, 8]]), torch.zeros(0, 4), torch.tensor([[8.0, 8, 16, 16], [0, 0, 4, 4]])],
        [torch.tensor([0]), torch.zeros(0, dtype=torch.long), torch.tensor([1, 2])],
    )
    batch = ImageBatch(torch.arange(3.0).reshape(3, 1, 1, 1).expand(3, 3, 16, 16), boxes, classes, keep)
    picked = batch.index(torch.tensor([2, 0]))
    assert picked.images[:, 0, 0, 0].tolist() == [2.0, 0.0]
    assert picked.classes.tolist() == [[1, 2], [0, 0]] and picked.keep.tolist() == [[True, True], [True, False]]
    torch.testing.assert_close(picked.boxes[0], boxes[2])
    assert batch.index(slice(1, 2)).keep.tolist() == [[False, False]]
