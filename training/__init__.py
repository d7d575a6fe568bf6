"""Training stages: the soft-label reward model (`reward`) and PPO with KL control (`ppo`).

The maths lives in pure functions next to each trainer and is unit-tested on its own.
"""


class TrainingError(RuntimeError):
    """Training cannot go on: no usable data, or a non-finite loss or reward."""
