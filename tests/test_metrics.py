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


def _png(value: int) -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.full((8, 8, 3), value, np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def test_evaluator_log_loss_is_the_mean_cross_entropy_of_the_true_class():
    """The evaluator behind validation, pipeline.evaluate and the review: log_loss against the
    formula, over batches of unequal size; accuracy from the same logits."""
    import torch

    from pipeline.evaluate.shards import evaluate_batches

    rng = np.random.default_rng(0)
    logits = torch.from_numpy(rng.normal(0, 2, (7, 3)).astype(np.float32))
    labels = np.array([0, 1, 2, 2, 1, 0, 2])

    class Replay(torch.nn.Module):  # answers the stored logits, row by row, in order
        def __init__(self):
            super().__init__()
            self.i = 0

        def forward(self, image, crop):
            out = logits[self.i:self.i + len(image)]
            self.i += len(image)
            return out, out

    batches = [{"image": [_png(i) for i in idx], "landmark_crop": [_png(i) for i in idx], "label": labels[idx]}
               for idx in (np.arange(0, 4), np.arange(4, 7))]
    res = evaluate_batches(Replay(), batches, CLASSES).finish()
    p = np.exp(logits.numpy()) / np.exp(logits.numpy()).sum(1, keepdims=True)
    assert res.metrics["log_loss"] == pytest.approx(-np.log(p[np.arange(7), labels]).mean(), rel=1e-5)
    assert res.metrics["accuracy"] == pytest.approx((logits.numpy().argmax(1) == labels).mean())


def test_best_checkpoint_ties_go_to_the_lower_val_log_loss(tmp_path):
    """Equal accuracy (common on small val splits, or 1.0 when people leak across the carve)
    keeps the epoch with the lower val log loss, not the first one; a better accuracy always
    wins; the tie-break survives a checkpoint round trip, and older checkpoints without it load."""
    import torch

    from pipeline.train import checkpoint as ck

    model = torch.nn.Linear(1, 1)
    state = ck.TrainState()
    history = [(0.5, 1.0), (0.8, 0.6), (0.8, 0.4), (0.7, 0.1), (0.8, 0.5)]  # (val acc, val log loss)
    for epoch, (acc, loss) in enumerate(history):
        model.weight.data.fill_(epoch)  # the kept weights say which epoch they came from
        state.update_best(acc, "max", model, epoch, tiebreak=loss)
    assert (state.best_epoch, state.best_metric, state.best_tiebreak) == (2, 0.8, 0.4)
    assert float(state.best_state["weight"]) == 2.0
    first = ck.TrainState()
    for epoch, (acc, _) in enumerate(history):
        first.update_best(acc, "max", model, epoch)  # no tie-break given: the first best stays
    assert first.best_epoch == 1
    low = ck.TrainState()
    for epoch, loss in enumerate([0.9, 0.5, 0.5, 0.7]):
        low.update_best(loss, "min", model, epoch, tiebreak=loss)
    assert low.best_epoch == 1

    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.StepLR(opt, 1)
    ck.save(tmp_path, 4, model, opt, sched, None, state, {}, CLASSES)
    assert ck.restore(tmp_path, model, opt, sched, None).best_tiebreak == 0.4
    saved = torch.load(tmp_path / ck.CKPT_FILE, weights_only=True)
    del saved["best_tiebreak"]
    torch.save(saved, tmp_path / ck.CKPT_FILE)
    old = ck.restore(tmp_path, model, opt, sched, None)
    assert old.best_tiebreak == float("inf") and old.best_epoch == 2


def test_select_last_keeps_the_final_epoch_and_its_own_metric():
    """checkpoint.select=last (a val split too small to choose by): every epoch replaces the kept
    weights, whatever its val accuracy, and best_metric is that epoch's value, not the maximum."""
    import torch

    from pipeline.config import ConfigError, load_config
    from pipeline.train import checkpoint as ck

    model = torch.nn.Linear(1, 1)
    last, best = ck.TrainState(), ck.TrainState()
    for epoch, acc in enumerate([0.5, 0.9, 0.7]):
        model.weight.data.fill_(epoch)
        last.update_best(acc, "max", model, epoch, tiebreak=0.1, select="last")
        best.update_best(acc, "max", model, epoch, tiebreak=0.1)
    assert (last.best_epoch, last.best_metric, float(last.best_state["weight"])) == (2, 0.7, 2.0)
    assert (best.best_epoch, best.best_metric, float(best.best_state["weight"])) == (1, 0.9, 1.0)
    with pytest.raises(ConfigError, match="checkpoint.select must be best or last"):
        load_config(None, ["checkpoint.select=final"])
