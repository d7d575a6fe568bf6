"""The evaluate stage: the trained policy (and PPO's snapshots) against the reference on
held-out prompts. It sits above `judges` and `training`, whose judge and reward model it uses."""
