"""The selection agent: Stable-Baselines3 PPO over :mod:`memrl.envs`, its training and replay.

What a run writes (evaluations.csv, pareto.csv, best_mask.json, the Optuna record, the report)
lives in :mod:`memrl.reporting`, below this package, so other outer loops write the same files.

* :mod:`memrl.agents.config`    YAML configuration (env / ppo / train sections)
* :mod:`memrl.agents.train`     ``memrl train``: PPO.learn + callbacks, checkpoints, resume
* :mod:`memrl.agents.callbacks` evaluation record, TensorBoard, checkpoints
* :mod:`memrl.agents.dry_run`   ``memrl train --dry-run``: checks and a cost estimate, nothing trained
* :mod:`memrl.agents.replay`    ``memrl replay``: the policy's mask on a new dataset, Stage 2
"""
