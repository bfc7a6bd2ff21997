"""The ``trainer`` agent: a long-running tool that really trains a small neural network.

``train`` fits a one-hidden-layer perceptron (tanh, sigmoid output, binary cross-entropy) with
mini-batch gradient descent on "two moons", a seeded synthetic dataset that a linear model cannot
separate. It is the fleet's example of a slow call: progress after every epoch, a log line every
few epochs, and cancellation that stops the work within one slice of mini-batches.
"""

from __future__ import annotations

import asyncio
import math
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Annotated

from mcp.shared.exceptions import MCPDeprecationWarning
from pydantic import Field
from typing_extensions import TypedDict

from edgefleet.agents import Agent, Context, ToolAnnotations
from edgefleet.agents.examples._numpy import numpy as np

# One slice of mini-batches runs between two awaits: ~3 ms of numpy at the defaults on a 2-core
# machine, so an epoch (~90 ms) never blocks the event loop for long and a cancel lands within a slice.
_BATCHES_PER_SLICE = 16
_LOG_EVERY = 10
# Rows per forward pass when scoring: bounds the hidden activations at 4096 x hidden floats.
_EVAL_CHUNK = 4096
_HISTORY_POINTS = 50
_TEST_FRACTION = 0.2


@dataclass(frozen=True)
class TrainConfig:
    """Hyper-parameters; the defaults take about 3 s of compute on a 2-core machine (~90 ms an epoch)."""

    epochs: int = 30
    learning_rate: float = 0.1
    hidden: int = 512
    samples: int = 40_000
    batch_size: int = 64
    noise: float = 0.2
    seed: int = 0


class LossPoint(TypedDict):
    epoch: int
    loss: float


class TrainResult(TypedDict):
    """Metrics of a finished run; a loss is the mean binary cross-entropy over an epoch's mini-batches."""

    final_loss: float
    train_accuracy: float
    test_accuracy: float
    epochs: int
    duration_seconds: float
    loss_history: list[LossPoint]
    train_samples: int
    test_samples: int
    parameters: int


def make_moons(samples: int, noise: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Two interleaving half circles with gaussian noise: points ``(samples, 2)`` and labels 0/1, shuffled."""
    rng = np.random.default_rng(seed)
    upper = samples // 2
    angles = rng.uniform(0.0, math.pi, samples)
    points = np.column_stack([np.cos(angles), np.sin(angles)])
    # The second moon is the first one flipped and shifted so that the two hook into each other.
    points[upper:] = np.column_stack([1.0 - points[upper:, 0], 0.5 - points[upper:, 1]])
    points += rng.normal(0.0, noise, points.shape)
    labels = np.concatenate([np.zeros(upper), np.ones(samples - upper)])
    order = rng.permutation(samples)
    return points[order], labels[order]


class MoonsTrainer:
    """A 2 -> hidden (tanh) -> 1 (sigmoid) network and its train/test split, trained epoch by epoch."""

    def __init__(self, config: TrainConfig) -> None:
        self.config = config
        points, labels = make_moons(config.samples, config.noise, config.seed)
        split = config.samples - max(1, round(config.samples * _TEST_FRACTION))
        # Standardise with training statistics only, so the test set stays unseen.
        mean, std = points[:split].mean(axis=0), points[:split].std(axis=0)
        points = (points - mean) / std
        self.x_train, self.y_train = points[:split], labels[:split]
        self.x_test, self.y_test = points[split:], labels[split:]
        # Weights and shuffles get their own stream, derived from the same seed: one seed, one run.
        self.rng = np.random.default_rng([config.seed, 1])
        # Xavier-style initialisation keeps tanh out of saturation at the start.
        self.w1 = self.rng.normal(0.0, 1.0 / math.sqrt(2), (2, config.hidden))
        self.b1 = np.zeros(config.hidden)
        self.w2 = self.rng.normal(0.0, 1.0 / math.sqrt(config.hidden), config.hidden)
        self.b2 = 0.0
        self.history: list[float] = []

    def _logits(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        hidden = np.tanh(x @ self.w1 + self.b1)
        return hidden, hidden @ self.w2 + self.b2

    def _step(self, x: np.ndarray, y: np.ndarray) -> float:
        """One gradient step on a mini-batch; returns the batch's summed loss before the step."""
        hidden, logits = self._logits(x)
        # sigmoid(z) written with tanh, which cannot overflow the way exp(-z) does.
        error = (0.5 * (1.0 + np.tanh(0.5 * logits)) - y) / len(y)  # d(mean BCE)/d(logits)
        grad_hidden = np.outer(error, self.w2) * (1.0 - hidden**2)
        lr = self.config.learning_rate
        self.w2 -= lr * (hidden.T @ error)
        self.b2 -= lr * float(error.sum())
        self.w1 -= lr * (x.T @ grad_hidden)
        self.b1 -= lr * grad_hidden.sum(axis=0)
        # Binary cross-entropy from the logits: log(1 + e^z) - y*z, stable for any z.
        return float(np.sum(np.logaddexp(0.0, logits) - y * logits))

    def epoch(self) -> Iterator[None]:
        """Run one epoch of shuffled mini-batches, yielding after each slice and at the end.

        Its loss, appended to ``history``, is the mean over its mini-batches as the weights moved (as
        Keras reports it): a separate pass over the whole training set would cost about an epoch again.
        """
        order = self.rng.permutation(len(self.y_train))
        size = self.config.batch_size
        total = 0.0
        for number, start in enumerate(range(0, len(order), size), start=1):
            batch = order[start : start + size]
            total += self._step(self.x_train[batch], self.y_train[batch])
            if number % _BATCHES_PER_SLICE == 0:
                yield
        self.history.append(total / len(order))
        yield  # an epoch shorter than a slice must still give its caller a point to await at

    def accuracy(self, x: np.ndarray, y: np.ndarray) -> float:
        """Share of points classified correctly, in chunks so the hidden activations stay small."""
        correct = 0
        for start in range(0, len(y), _EVAL_CHUNK):
            logits = self._logits(x[start : start + _EVAL_CHUNK])[1]
            correct += int(np.sum((logits > 0) == (y[start : start + _EVAL_CHUNK] == 1)))
        return correct / len(y)

    def result(self, started: float) -> TrainResult:
        """The metrics of the run so far; ``started`` is the ``time.perf_counter()`` when it began."""
        train_accuracy = self.accuracy(self.x_train, self.y_train)
        test_accuracy = self.accuracy(self.x_test, self.y_test)
        stride = max(1, math.ceil(len(self.history) / _HISTORY_POINTS))
        picked = list(range(0, len(self.history), stride))
        if picked[-1] != len(self.history) - 1:  # always show the final epoch
            picked.append(len(self.history) - 1)
        return {
            "final_loss": round(self.history[-1], 6),
            "train_accuracy": round(train_accuracy, 4),
            "test_accuracy": round(test_accuracy, 4),
            "epochs": len(self.history),
            "duration_seconds": round(time.perf_counter() - started, 3),
            "loss_history": [{"epoch": i + 1, "loss": round(self.history[i], 6)} for i in picked],
            "train_samples": len(self.y_train),
            "test_samples": len(self.y_test),
            "parameters": self.w1.size + self.b1.size + self.w2.size + 1,
        }


def fit(config: TrainConfig) -> TrainResult:
    """Train synchronously: what the ``train`` tool does, without progress, logs or awaits."""
    started = time.perf_counter()
    trainer = MoonsTrainer(config)
    for _ in range(config.epochs):
        for _ in trainer.epoch():
            pass
    return trainer.result(started)


async def _log(ctx: Context, message: str) -> None:
    # Log notifications are deprecated as of protocol 2026-07-28 (SEP-2577) and ctx.info warns on
    # every call; they still reach older clients and clients that opt in with a log level, so keep
    # sending them, without the warning (which a warnings-as-errors run would turn into a crash).
    # catch_warnings is process-wide: a concurrent call can at worst leave this same filter in place.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", MCPDeprecationWarning)
        await ctx.info(message)


agent = Agent(
    "trainer",
    description="Trains a small neural network with numpy: the fleet's example of a long-running, cancellable call.",
    version="1.0.0",
)


@agent.tool(
    "train",
    annotations=ToolAnnotations(
        # Read-only for the world (nothing is stored) and idempotent: the same arguments give the same metrics.
        readOnlyHint=True,
        idempotentHint=True,
        destructiveHint=False,
        openWorldHint=False,
    ),
    long_running=True,
)
async def train_tool(
    *,
    epochs: Annotated[int, Field(ge=1, le=2000, description="Passes over the training set.")] = TrainConfig.epochs,
    learning_rate: Annotated[
        float, Field(gt=0, le=10, description="Gradient descent step size.")
    ] = TrainConfig.learning_rate,
    hidden: Annotated[int, Field(ge=2, le=1024, description="Units in the hidden layer.")] = TrainConfig.hidden,
    samples: Annotated[
        int, Field(ge=100, le=200_000, description="Dataset size; 20% is held out for testing.")
    ] = TrainConfig.samples,
    batch_size: Annotated[
        int, Field(ge=1, le=4096, description="Examples per gradient step.")
    ] = TrainConfig.batch_size,
    noise: Annotated[
        float, Field(ge=0, le=1, description="Std of the gaussian noise on the points; more is harder.")
    ] = TrainConfig.noise,
    seed: Annotated[
        int, Field(ge=0, le=2**32 - 1, description="Seeds the data and the weights: same seed, same result.")
    ] = TrainConfig.seed,
    ctx: Context,
) -> TrainResult:
    """Train a one-hidden-layer neural network on a seeded "two moons" dataset and report its metrics.

    Long-running (seconds to minutes, depending on epochs and samples): reports progress after
    every epoch with the current training loss, and stops promptly when the call is cancelled.
    Returns the final loss, train and test accuracy, a subsampled loss history and the duration.
    """
    config = TrainConfig(epochs, learning_rate, hidden, samples, batch_size, noise, seed)
    started = time.perf_counter()
    trainer = MoonsTrainer(config)
    await _log(ctx, f"training a 2-{hidden}-1 network on {len(trainer.y_train)} samples for {epochs} epochs")
    for epoch in range(1, epochs + 1):
        for _ in trainer.epoch():
            # Lets other calls run on this event loop and is where a cancellation lands.
            await asyncio.sleep(0)
        loss = trainer.history[-1]
        await ctx.report_progress(epoch, epochs, f"epoch {epoch}/{epochs} loss={loss:.4f}")
        if epoch % _LOG_EVERY == 0 or epoch == epochs:
            await _log(ctx, f"epoch {epoch}/{epochs}: loss {loss:.4f}")
    # Scoring every point takes ~0.1 s in one go; numpy releases the GIL there, so a worker thread
    # keeps the event loop (other calls, heartbeats) responsive meanwhile.
    return await asyncio.to_thread(trainer.result, started)


if __name__ == "__main__":
    agent.main()
