"""The scorer interface RL rewards and evaluation share: registry, module:function plugins, weighted sums, and
the checks that stop a run with the plugin's name."""
import math

import pytest

from qwenimage.training.rewards import REGISTRY, RewardError, WeightedSum, build, register, score


@register("test_const")
def _const(value: float = 1.0):
    return lambda images, prompts, metadata: [value] * len(images)


def plugin(images, prompts, metadata):  # reached as "test_rewards_base:plugin"
    return [len(p) for p in prompts]


def test_registry_options_and_weights():
    assert "test_const" in REGISTRY
    total = WeightedSum([{"name": "test_const", "value": 0.5, "weight": 2.0}, "test_rewards_base:plugin"])
    assert total([None, None], ["ab", "abcd"]) == [1.0 + 2, 1.0 + 4]
    assert total.details == {"test_const": [0.5, 0.5], "test_rewards_base:plugin": [2.0, 4.0]}


@pytest.mark.parametrize("fn, message", [
    (lambda i, p, m: [1.0], r"'bad' returned 1 scores for 2 images"),
    (lambda i, p, m: [1.0, math.nan], r"'bad' returned a non-finite score for image 1"),
    (lambda i, p, m: 1 / 0, r"'bad' failed: ZeroDivisionError"),
    (lambda i, p, m: "no", r"'bad' returned str, not a list of numbers"),
])
def test_a_broken_scorer_is_named(fn, message):
    with pytest.raises(RewardError, match=message):
        score("bad", fn, [None, None], ["a", "b"])


def test_unknown_names_are_refused():
    with pytest.raises(ValueError, match="unknown scorer 'nope'"):
        build("nope")
    with pytest.raises(ValueError, match="cannot import"):
        build("no_such_module_xyz:fn")
