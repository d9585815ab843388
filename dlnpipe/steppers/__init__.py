"""The optimizers, by name: each a stepper that advances a batch of networks (:mod:`dlnpipe.trainer`).

Adding one: a module in this package with a :class:`~dlnpipe.steppers.base.Stepper` subclass (its
``options`` name the keyword arguments of ``train()`` it takes) and one entry below. The config's
``optimizer`` accepts every name listed here.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass

from dlnpipe._checks import check_choice

# name -> "module:class" (imported on first use: the config only needs the names)
STEPPERS = {"gd": "dlnpipe.steppers.gd:GradientDescent", "flow": "dlnpipe.steppers.flow:GradientFlow",
            "central": "dlnpipe.steppers.central:CentralFlow", "heavy_ball": "dlnpipe.steppers.momentum:HeavyBall",
            "adam": "dlnpipe.steppers.adam:Adam", "sgd": "dlnpipe.steppers.sgd:SGD"}
NAMES = tuple(STEPPERS)
DEFAULT = "gd"  # the paper's optimizer: what a cell, a network or train() has unless told otherwise


@dataclass(frozen=True)
class Option:
    """An optimizer option that can take one value per network (a grid point of the cube's optim axis):
    the config's description of it and the cube's coordinate(s) along ``optim`` that hold it, with their
    long names (a pair such as Adam's betas is two coordinates)."""

    description: str
    coordinates: dict[str, str]


# Every per-network option of every stepper (each stepper's ``per_network`` names its own; a test checks
# that together they are exactly these): the one list the config, the cube and the trainer read.
OPTIONS = {
    "momentum": Option("heavy_ball: β in [0, 1) (default 0.9); v ← βv + ∇R, W ← W − ηv",
                       {"momentum": "heavy_ball: momentum beta (NaN: not this optimizer)"}),
    "betas": Option("adam: (β1, β2), each in [0, 1) (default [0.9, 0.999]); a list of pairs: one grid point each",
                    {"beta1": "adam: beta1 (NaN: not this optimizer)",
                     "beta2": "adam: beta2 (NaN: not this optimizer)"}),
    "eps": Option("adam: ε > 0 added to √v̂ (default 1e-8)", {"eps": "adam: epsilon (NaN: not this optimizer)"}),
    "batch_size": Option("sgd: samples per mini-batch, 1 <= b <= n (default n: gradient descent)",
                         {"batch_size": "gd and sgd: samples per step (n: full batch; NaN: not these optimizers)"}),
    "label_noise": Option("gd and sgd: standard deviation σ >= 0 of the fresh Gaussian noise added to the labels at "
                          "every step (default 0)",
                          {"label_noise": "gd and sgd: standard deviation of the label noise (NaN: not these "
                                          "optimizers)"}),
}


def get(name: str):
    """The stepper class called ``name``."""
    module, cls = STEPPERS[check_choice("optimizer", name, NAMES)].split(":")
    return getattr(importlib.import_module(module), cls)


def build(name: str, given: dict | None = None, **defaults):
    """A stepper configured from ``given`` options (each must be one it takes) and from ``defaults``
    (train()'s keyword arguments with a default: those it does not take are ignored)."""
    cls = get(name)
    wrong = sorted(set(given or {}) - set(cls.options))
    if wrong:
        raise ValueError(f"optimizer {name!r} takes no option {wrong[0]!r}; its options: {', '.join(cls.options)}")
    cls = cls.variant(given or {})
    given = {k: v for k, v in (given or {}).items() if k in cls.options}
    return cls(**{k: v for k, v in defaults.items() if k in cls.options and k not in given}, **given)
