"""The contract every registered network keeps: one parametrized test per check.

The classifiers' counts, stages and metadata are checked here one by one; every
network, classifiers and task models alike, keeps the task contract (build small,
no Lambda, ``.keras`` round trip, one training step, the inference model), driven by
its task's row in :mod:`kvision.testing.tasks`.
"""

import numpy as np
import pytest

import kvision
from kvision import registry, testing
from kvision.models import get_info, list_models
from kvision.testing.tasks import TASKS

NAMES = list_models(task="classification")
EVERY = list_models()
# The deeper members of a family are its smallest member's code with more repeats (same
# builder, same layer classes): the task contract of the smallest covers their
# serialization and training, and saving 10-270 MB files cost minutes of the suite.
# Their counts, stage outputs, Lambda check and metadata are still checked one by one.
ROUND_TRIPPED_BY = {
    **{f"efficientnet_b{i}": "efficientnet_b0" for i in range(1, 8)},
    "efficientnet_lite1": "efficientnet_lite0", "efficientnet_lite2": "efficientnet_lite0",
    "densenet169": "densenet121", "densenet201": "densenet121",
    "resnet101": "resnet50", "resnet152": "resnet50",
    "resnet101_v2": "resnet50_v2", "resnet152_v2": "resnet50_v2",
    "resnext101_32x8d": "resnext50_32x4d",
}


@pytest.mark.parametrize("name", NAMES)
def test_parameter_count_and_stages_at_default_size(name):
    model = testing.assert_param_count(name)
    info = get_info(name)
    assert model.output_shape == (None, info.default_classes)
    testing.assert_no_lambda(model)


@pytest.mark.parametrize("name", NAMES)
def test_stages_and_pooled_features_at_any_size(name):
    """One features model per network (any input size, avg pooling): its stage outputs
    have their strides, it runs at the minimum size, and a smaller size is refused.
    ("max" and unpooled features come from the same shared code: test_builder.py.)"""
    info = get_info(name)
    _, features = testing.assert_stage_outputs(name, pooling="avg")
    assert features.ndim == 2 and features.shape[0] == 2
    assert np.all(np.isfinite(features))
    too_small = (info.min_size - 1, info.min_size - 1, info.input_channels)
    with pytest.raises(ValueError, match=f"at least {info.min_size}"):
        kvision.create(name, include_top=False, input_shape=too_small)


def test_round_trip_stand_ins_share_the_builder():
    for deep, sibling in ROUND_TRIPPED_BY.items():
        assert deep in NAMES and sibling in NAMES
        deep_info, sibling_info = get_info(deep), get_info(sibling)
        assert deep_info.family == sibling_info.family
        assert deep_info.builder.__module__ == sibling_info.builder.__module__


def test_every_task_has_a_row_in_the_contract_table():
    missing = set(registry.TASKS) - set(TASKS)
    assert not missing, f"tasks without a row in kvision.testing.tasks: {missing}"
    assert {get_info(name).task for name in EVERY} <= set(TASKS)
    assert len(EVERY) > len(NAMES)  # the task models are in the contract too


@pytest.mark.parametrize("name", [n for n in EVERY if n not in ROUND_TRIPPED_BY])
def test_task_contract(name):
    """Small build (classifiers with 7 classes), no Lambda, ``.keras`` round trip with
    ``safe_mode=True``, one training step with the task's losses, and the task's
    inference model in its documented structure."""
    testing.assert_task_contract(name)


@pytest.mark.parametrize("name", NAMES)
def test_metadata_is_complete(name):
    info = get_info(name)
    assert info.task == "classification"
    assert info.paper and info.year >= 1989 and info.family and info.key_idea
    assert info.num_params and info.params_source
    assert info.min_size <= info.default_size
    assert set(info.stage_outputs) <= {4, 8, 16, 32}
    assert info.builder.__doc__ and info.builder.__name__ in dir(kvision.models)
    with pytest.raises(ValueError, match="classes"):
        kvision.create(name, classes=0)
