"""The optimizers, by name: each a stepper that advances a batch of networks (:mod:`dlnpipe.trainer`).

Adding one: a module in this package with a :class:`~dlnpipe.steppers.base.Stepper` subclass (its
``options`` name the keyword arguments of ``train()`` it takes) and one entry below. The config's
``optimizer`` accepts every name listed here.
"""

from __future__ import annotations

import importlib

from dlnpipe._checks import check_choice

# name -> "module:class" (imported on first use: the config only needs the names)
STEPPERS = {"gd": "dlnpipe.steppers.gd:GradientDescent", "flow": "dlnpipe.steppers.flow:GradientFlow",
            "heavy_ball": "dlnpipe.steppers.momentum:HeavyBall", "adam": "dlnpipe.steppers.adam:Adam",
            "sgd": "dlnpipe.steppers.sgd:SGD"}
NAMES = tuple(STEPPERS)
DEFAULT = "gd"  # the paper's optimizer: what a cell, a network or train() has unless told otherwise


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
