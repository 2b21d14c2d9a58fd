"""Training: SFT, GRPO and PPO on top of TRL, their settings, the shared RL set-up, and the rewards
(which wrap the grader, so a reward and an evaluation verdict agree)."""
