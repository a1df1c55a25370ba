"""The one evaluator's metrics, checked against values computed by hand."""
import numpy as np
import pytest

from pipeline.metrics import confusion_matrix, format_table, metrics_from_confusion, plot_confusion

CLASSES = ["neutral", "happy", "sad"]
# rows = true, cols = predicted
CM = np.array([[3, 1, 0],
               [0, 4, 1],
               [2, 0, 1]])


def test_confusion_matrix_counts_pairs():
    t = np.array([0, 0, 1, 2, 2, 2])
    p = np.array([0, 1, 1, 0, 2, 2])
    assert confusion_matrix(t, p, 3).tolist() == [[1, 1, 0], [0, 1, 0], [1, 0, 2]]


def test_confusion_matrix_rejects_bad_labels():
    with pytest.raises(ValueError, match="outside"):
        confusion_matrix(np.array([0, 3]), np.array([0, 1]), 3)


def test_metrics_match_hand_computation():
    m = metrics_from_confusion(CM, CLASSES)
    assert m["accuracy"] == pytest.approx(8 / 12)
    recalls = [3 / 4, 4 / 5, 1 / 3]
    assert m["mean_class_accuracy"] == pytest.approx(sum(recalls) / 3)
    precisions = [3 / 5, 4 / 5, 1 / 2]
    f1 = [2 * p * r / (p + r) for p, r in zip(precisions, recalls)]
    assert m["macro_f1"] == pytest.approx(sum(f1) / 3)
    assert m["recall_sad"] == pytest.approx(1 / 3)
    assert m["num_samples"] == 12


def test_absent_class_is_left_out_of_means():
    cm = np.array([[2, 0, 0], [1, 1, 0], [0, 0, 0]])
    m = metrics_from_confusion(cm, CLASSES)
    assert "recall_sad" not in m
    assert m["mean_class_accuracy"] == pytest.approx((1.0 + 0.5) / 2)


def test_plot_and_table(tmp_path):
    png = plot_confusion(CM, CLASSES, tmp_path / "cm.png")
    assert png.read_bytes()[:4] == b"\x89PNG"
    table = format_table({"champion": {"accuracy": 0.5}, "challenger": {"accuracy": 0.75}})
    assert "0.7500" in table and "champion" in table
