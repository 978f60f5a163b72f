"""The Keras stack's validation metrics: confusion counts over the epoch, so val IoU/Dice are the
same micro scores (binary) or mIoU (many classes) the Lightning stack logs."""

from __future__ import annotations

import tensorflow as tf
import tf_keras as keras


class ConfusionCounts(keras.metrics.Metric):
    """tp, fp, fn, tn over the epoch, so val IoU/Dice are micro scores like the Lightning stack's."""

    def __init__(self, name: str = "iou_micro", **kwargs):
        super().__init__(name=name, **kwargs)
        self.counts = self.add_weight(name="counts", shape=(4,), initializer="zeros", dtype=tf.float64)

    def update_state(self, y_true, y_pred, sample_weight=None):
        pred = tf.cast(y_pred, tf.float32) > 0.5
        truth = tf.cast(y_true, tf.float32) > 0.5
        tp = tf.reduce_sum(tf.cast(pred & truth, tf.float64))
        fp = tf.reduce_sum(tf.cast(pred & ~truth, tf.float64))
        fn = tf.reduce_sum(tf.cast(~pred & truth, tf.float64))
        tn = tf.cast(tf.size(pred), tf.float64) - tp - fp - fn
        self.counts.assign_add(tf.stack([tp, fp, fn, tn]))

    def result(self):
        tp, fp, fn = self.counts[0], self.counts[1], self.counts[2]
        return tf.math.divide_no_nan(tp, tp + fp + fn)  # IoU; the callback reads all four counts

    def reset_state(self):
        self.counts.assign(tf.zeros(4, tf.float64))


class ClassConfusion(keras.metrics.Metric):
    """Many classes: the epoch's confusion matrix (truth x argmax, ignored pixels left out), so val
    IoU is the mIoU over the classes present, as the Lightning stack scores it (``core/labels.py``)."""

    def __init__(self, classes: int, ignore_index: int, name: str = "class_confusion", **kwargs):
        super().__init__(name=name, **kwargs)
        self.classes, self.ignore_index = classes, ignore_index
        self.matrix = self.add_weight(name="matrix", shape=(classes, classes), initializer="zeros", dtype=tf.float64)

    def update_state(self, y_true, y_pred, sample_weight=None):
        truth = tf.reshape(tf.cast(tf.round(y_true[..., 0]), tf.int32), [-1])
        pred = tf.reshape(tf.argmax(y_pred, -1, output_type=tf.int32), [-1])
        keep = truth != self.ignore_index
        self.matrix.assign_add(tf.math.confusion_matrix(tf.boolean_mask(truth, keep), tf.boolean_mask(pred, keep),
                                                        num_classes=self.classes, dtype=tf.float64))

    def result(self):
        diagonal = tf.linalg.diag_part(self.matrix)
        union = tf.reduce_sum(self.matrix, 0) + tf.reduce_sum(self.matrix, 1) - diagonal
        present = union > 0
        return tf.reduce_mean(tf.boolean_mask(diagonal / tf.where(present, union, 1.0), present))

    def reset_state(self):
        self.matrix.assign(tf.zeros((self.classes, self.classes), tf.float64))


def find_confusion(model) -> ConfusionCounts | ClassConfusion:
    stack = list(model.metrics)
    while stack:
        m = stack.pop()
        if isinstance(m, (ConfusionCounts, ClassConfusion)):
            return m
        stack.extend(getattr(m, "metrics", []) if m is not model else [])
    raise RuntimeError("the model was compiled without ConfusionCounts")
