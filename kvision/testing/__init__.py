"""The shared model contract that the tests hold every network to."""

from kvision.testing.contract import (  # noqa: F401
    assert_keras_parity,
    assert_no_lambda,
    assert_param_count,
    assert_round_trip,
    assert_stage_outputs,
    assert_task_contract,
    assert_trains,
    built_at_once,
    counted_params,
    randomize_weights,
    tiny_encoder,
)
from kvision.testing.numerics import EPS32, assert_float32_close, float32_atol  # noqa: F401
