"""Training stages: SL-CAI fine-tuning on the revisions (`sft`), the soft-label reward model
(`reward`), both on the one supervised loop (`supervised`), and PPO with KL control (`ppo`,
its checkpoint plumbing in `checkpoint`). Configs in `config` (pydantic only).

The maths lives in pure functions next to each trainer and is unit-tested on its own. This
package imports the core and `constitution`, never `judges`: a judge's scorer reaches PPO as
an argument, passed in by the flow.
"""


class TrainingError(RuntimeError):
    """Training cannot go on: no usable data, or a non-finite loss or reward."""
