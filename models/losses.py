"""Classification losses by name, each taking (y_true one-hot [..., K], logits [..., K]).

    loss = get_loss("automated_focal", momentum=0.95)

Every loss returns one value per example; Keras's reduction (mean by default) makes the batch
loss. Logits are cast to float32 first, so mixed precision models need nothing special. Integer
labels (one rank less than the logits) are accepted and turned one-hot.

`automated_focal` keeps state: p_hat, a running mean of the probability the network gives the
correct class, in a Keras variable (`loss.variables`) so that training backups save and restore it.
It updates on every call; an evaluation step should call `loss.for_evaluation()`, a twin that
reads p_hat without moving it (every loss here has `for_evaluation`, the stateless ones return
themselves).
"""
from __future__ import annotations

import math
from typing import Optional, Sequence, Union

import keras
from keras import ops

from models.registry import LOSSES


def _inputs(y_true, y_pred):
    """float32 one-hot targets and float32 logits."""
    logits = ops.cast(y_pred, "float32")
    if len(y_true.shape) == len(logits.shape) - 1:
        y_true = ops.one_hot(ops.cast(y_true, "int32"), logits.shape[-1])
    return ops.cast(y_true, "float32"), logits


def _number(name: str, value, low: float = 0.0, high: float = math.inf, low_open: bool = False) -> float:
    ok = not isinstance(value, bool) and isinstance(value, (int, float))
    if ok:
        ok = (value > low if low_open else value >= low) and value <= high
    if not ok:
        bracket = "(" if low_open else "["
        raise ValueError(f"Invalid value for argument `{name}`. Expected a number in {bracket}{low}, {high}]. "
                         f"Received {name}={value!r}")
    return float(value)


class ClassificationLoss(keras.losses.Loss):
    """Base: a stateless loss is its own evaluation twin."""

    def for_evaluation(self) -> "ClassificationLoss":
        return self


@LOSSES.register("categorical_crossentropy")
@keras.saving.register_keras_serializable(package="convpipe")
class CategoricalCrossentropy(ClassificationLoss):
    """-sum_c y_c log p_c with p = softmax(logits) clipped to [epsilon, 1 - epsilon] (the textbook form)."""

    def __init__(self, epsilon: Optional[float] = None, name: str = "categorical_crossentropy", **kwargs):
        super().__init__(name=name, **kwargs)
        self.epsilon = keras.config.epsilon() if epsilon is None else _number("epsilon", epsilon, 0.0, 0.5, True)

    def call(self, y_true, y_pred):
        y, logits = _inputs(y_true, y_pred)
        p = ops.clip(ops.softmax(logits, axis=-1), self.epsilon, 1.0 - self.epsilon)
        return -ops.sum(y * ops.log(p), axis=-1)

    def get_config(self):
        return {**super().get_config(), "epsilon": self.epsilon}


@LOSSES.register("softmax_cross_entropy")
@keras.saving.register_keras_serializable(package="convpipe")
class SoftmaxCrossEntropy(ClassificationLoss):
    """-sum_c y_c log_softmax(z)_c, straight from the logits (tf.nn.softmax_cross_entropy_with_logits)."""

    def __init__(self, name: str = "softmax_cross_entropy", **kwargs):
        super().__init__(name=name, **kwargs)

    def call(self, y_true, y_pred):
        y, logits = _inputs(y_true, y_pred)
        return -ops.sum(y * ops.log_softmax(logits, axis=-1), axis=-1)


@LOSSES.register("hinge")
@keras.saving.register_keras_serializable(package="convpipe")
class MulticlassHinge(ClassificationLoss):
    """Crammer-Singer: max(0, margin + max_{j != y} z_j - z_y).

    Keras's categorical_hinge takes max((1 - y) * z), which reads 0 for the true class and so is
    wrong when every other logit is negative; this one leaves the true class out.
    """

    def __init__(self, margin: float = 1.0, name: str = "hinge", **kwargs):
        super().__init__(name=name, **kwargs)
        self.margin = _number("margin", margin)

    def call(self, y_true, y_pred):
        y, logits = _inputs(y_true, y_pred)
        true_logit = ops.sum(y * logits, axis=-1)
        best_other = ops.max(ops.where(y > 0.5, ops.full_like(logits, -math.inf), logits), axis=-1)
        return ops.relu(self.margin + best_other - true_logit)

    def get_config(self):
        return {**super().get_config(), "margin": self.margin}


class _ProbabilityLoss(ClassificationLoss):
    """A regression loss between softmax probabilities and the one-hot target, averaged over classes."""

    def call(self, y_true, y_pred):
        y, logits = _inputs(y_true, y_pred)
        return ops.mean(self.distance(ops.softmax(logits, axis=-1), y), axis=-1)


@LOSSES.register("mse")
@keras.saving.register_keras_serializable(package="convpipe")
class ProbabilityMSE(_ProbabilityLoss):
    """mean_c (p_c - y_c)^2 (the Brier score divided by K)."""

    def __init__(self, name: str = "mse", **kwargs):
        super().__init__(name=name, **kwargs)

    def distance(self, p, y):
        return ops.square(p - y)


@LOSSES.register("mae")
@keras.saving.register_keras_serializable(package="convpipe")
class ProbabilityMAE(_ProbabilityLoss):
    """mean_c |p_c - y_c|."""

    def __init__(self, name: str = "mae", **kwargs):
        super().__init__(name=name, **kwargs)

    def distance(self, p, y):
        return ops.abs(p - y)


@LOSSES.register("msle")
@keras.saving.register_keras_serializable(package="convpipe")
class ProbabilityMSLE(_ProbabilityLoss):
    """mean_c (log(1 + p_c) - log(1 + y_c))^2."""

    def __init__(self, name: str = "msle", **kwargs):
        super().__init__(name=name, **kwargs)

    def distance(self, p, y):
        return ops.square(ops.log1p(p) - ops.log1p(y))


def _alpha(alpha) -> Union[float, list[float]]:
    if isinstance(alpha, (list, tuple)):
        if not alpha:
            raise ValueError("Invalid value for argument `alpha`. Expected a number or one weight per class. "
                             "Received alpha=[]")
        return [_number("alpha", a) for a in alpha]
    return _number("alpha", alpha)


def _alpha_t(alpha, y):
    """alpha of each example's true class: the scalar itself, or sum_c y_c alpha_c."""
    if isinstance(alpha, list):
        if y.shape[-1] is not None and len(alpha) != y.shape[-1]:
            raise ValueError(f"alpha: expected {y.shape[-1]} weights, one per class, received {len(alpha)}")
        return ops.sum(y * ops.convert_to_tensor(alpha, "float32"), axis=-1, keepdims=True)
    return alpha


@LOSSES.register("focal")
@keras.saving.register_keras_serializable(package="convpipe")
class FocalLoss(ClassificationLoss):
    """FL = -alpha (1 - p_t)^gamma log p_t (Lin et al. 2017); alpha a number or one weight per class.

    Confident, correct examples (p_t near 1) weigh little, so training attends to the hard ones.
    """

    def __init__(self, gamma: float = 2.0, alpha: Union[float, Sequence[float]] = 0.25, name: str = "focal",
                 **kwargs):
        super().__init__(name=name, **kwargs)
        self.gamma = _number("gamma", gamma)
        self.alpha = _alpha(alpha)

    def call(self, y_true, y_pred):
        y, logits = _inputs(y_true, y_pred)
        log_p = ops.log_softmax(logits, axis=-1)
        factor = ops.power(1.0 - ops.exp(log_p), self.gamma)
        return -ops.sum(_alpha_t(self.alpha, y) * y * factor * log_p, axis=-1)

    def get_config(self):
        return {**super().get_config(), "gamma": self.gamma, "alpha": self.alpha}


@LOSSES.register("automated_focal")
@keras.saving.register_keras_serializable(package="convpipe")
class AutomatedFocalLoss(ClassificationLoss):
    """Focal loss with gamma = -ln(p_hat), after Weber et al. (2019), "Automated focal loss".

    p_hat is an exponential moving average (`momentum`) of the batch-mean probability of the correct
    class. -ln(p_hat) is its information content: large while the network is unsure, falling towards
    0 (plain cross-entropy) as it gets better. The modulating factor (1 - p_t)^gamma is a weight and
    carries no gradient. p_hat starts unset (0) and takes the first batch's value, unless
    `initial_p_hat` is given; until then `gamma` reads 0. Under tf.distribute the variable is
    mirrored with MEAN aggregation, so every replica's update averages into one p_hat.
    """

    def __init__(self, momentum: float = 0.95, alpha: Union[float, Sequence[float]] = 1.0,
                 initial_p_hat: Optional[float] = None, update: bool = True, name: str = "automated_focal",
                 **kwargs):
        super().__init__(name=name, **kwargs)
        self.momentum = _number("momentum", momentum, 0.0, 1.0)
        self.alpha = _alpha(alpha)
        self.initial_p_hat = None if initial_p_hat is None else _number("initial_p_hat", initial_p_hat, 0.0, 1.0, True)
        self.update = bool(update)
        self.p_hat = keras.Variable(self.initial_p_hat or 0.0, shape=(), dtype="float32", trainable=False,
                                    autocast=False, aggregation="mean", name="p_hat")

    @property
    def variables(self) -> list:
        return [self.p_hat]

    @property
    def gamma(self):
        """-ln(p_hat), 0 while p_hat is unset."""
        return self._gamma(ops.convert_to_tensor(self.p_hat))

    @staticmethod
    def _gamma(p_hat):
        return ops.where(p_hat > 0, -ops.log(ops.clip(p_hat, keras.config.epsilon(), 1.0)), 0.0)

    def for_evaluation(self) -> "AutomatedFocalLoss":
        """A twin sharing p_hat that reads it but never moves it."""
        twin = object.__new__(type(self))     # not copy.copy: Keras objects copy by config, with a new p_hat
        twin.__dict__.update(self.__dict__)
        twin.update = False
        return twin

    def call(self, y_true, y_pred):
        y, logits = _inputs(y_true, y_pred)
        log_p = ops.log_softmax(logits, axis=-1)
        p = ops.exp(log_p)
        batch_p = ops.stop_gradient(ops.mean(ops.sum(y * p, axis=-1)))
        current = ops.convert_to_tensor(self.p_hat)
        if self.update:
            moved = self.momentum * current + (1.0 - self.momentum) * batch_p
            self.p_hat.assign(ops.where(current > 0, moved, batch_p))
            p_hat = ops.convert_to_tensor(self.p_hat)
        else:
            p_hat = ops.where(current > 0, current, batch_p)
        gamma = ops.stop_gradient(self._gamma(p_hat))
        factor = ops.stop_gradient(ops.power(1.0 - p, gamma))
        return -ops.sum(_alpha_t(self.alpha, y) * y * factor * log_p, axis=-1)

    def get_config(self):
        return {**super().get_config(), "momentum": self.momentum, "alpha": self.alpha,
                "initial_p_hat": self.initial_p_hat, "update": self.update}
