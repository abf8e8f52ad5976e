"""The selection agent: Stable-Baselines3 PPO over :mod:`memrl.envs`, its training and replay.

* :mod:`memrl.agents.config`    YAML configuration (env / ppo / train sections)
* :mod:`memrl.agents.train`     ``memrl train``: PPO.learn + callbacks, checkpoints, resume
* :mod:`memrl.agents.callbacks` evaluation record, TensorBoard, checkpoints
* :mod:`memrl.agents.records`   evaluations.csv, pareto.csv, best_mask.json
* :mod:`memrl.agents.replay`    ``memrl replay``: the policy's mask on a new dataset, Stage 2
"""
