#!/usr/bin/env python3
"""Data-parallel TensorFlow training with Horovod (CPU), unchanged for any
transport: the launcher picks UCX tcp or FreeFlow through the environment.

Synthetic but learnable data (labels from a fixed random "teacher"), so the
loss must go down. Rank 0 prints one RESULT line with images/s and the loss
at the start and the end, and the script fails if the loss did not drop.
"""
import argparse
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
import horovod.tensorflow.keras as hvd  # noqa: E402


def data(n, seed):
    """Images 32x32x3: one fixed random prototype per class (the same on every
    rank) plus noise; the label is the class."""
    protos = np.random.default_rng(1234).standard_normal((10, 32, 32, 3)).astype(np.float32)
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 10, n)
    x = protos[y] + 2.0 * rng.standard_normal((n, 32, 32, 3)).astype(np.float32)
    return x, y.astype(np.int64)


def model():
    return tf.keras.Sequential([
        tf.keras.layers.Conv2D(16, 3, activation="relu", input_shape=(32, 32, 3)),
        tf.keras.layers.MaxPooling2D(),
        tf.keras.layers.Flatten(),
        tf.keras.layers.Dense(2048, activation="relu"),  # ~7.4M weights: a 30 MB allreduce per step
        tf.keras.layers.Dense(10),
    ])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=64, help="per rank")
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--label", default=os.environ.get("FF_EXAMPLE_LABEL", "run"))
    a = ap.parse_args()

    hvd.init()
    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    tf.random.set_seed(42)
    x, y = data(a.batch * a.steps, seed=hvd.rank())
    ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(a.batch).repeat()

    m = model()
    opt = hvd.DistributedOptimizer(tf.keras.optimizers.SGD(0.002 * hvd.size(), momentum=0.9))
    m.compile(optimizer=opt, loss=tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True))

    class Timer(tf.keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.losses, self.t0 = [], None

        def on_train_batch_end(self, batch, logs=None):
            self.losses.append(logs["loss"])
            if batch + 1 == a.warmup:
                self.t0 = time.perf_counter()

    timer = Timer()
    m.fit(ds, steps_per_epoch=a.steps, epochs=1, verbose=0,
          callbacks=[hvd.callbacks.BroadcastGlobalVariablesCallback(0), timer])
    secs = time.perf_counter() - timer.t0
    images = (a.steps - a.warmup) * a.batch * hvd.size()
    first = float(np.mean(timer.losses[:5]))
    last = float(np.mean(timer.losses[-5:]))
    # The communication alone: allreduce of one step's gradients.
    grads = tf.ones([sum(int(np.prod(w.shape)) for w in m.trainable_weights)], tf.float32)
    hvd.allreduce(grads)
    t0 = time.perf_counter()
    for _ in range(10):
        hvd.allreduce(grads).numpy()
    ar_ms = (time.perf_counter() - t0) / 10 * 1e3
    if hvd.rank() == 0:
        print(f"RESULT label={a.label} ranks={hvd.size()} images_per_sec={images / secs:.1f} "
              f"loss_first={first:.4f} loss_last={last:.4f} allreduce_mb={grads.shape[0] * 4 / 1e6:.1f} "
              f"allreduce_ms={ar_ms:.2f}", flush=True)
    if not last < 0.9 * first:
        raise SystemExit(f"loss did not go down: {first:.4f} -> {last:.4f}")


if __name__ == "__main__":
    main()
