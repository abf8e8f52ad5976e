"""Black-box search baselines over the same evaluation as the agent: ``memrl search``.

Below :mod:`memrl.agents` (both are outer loops over :mod:`memrl.evaluation`; the agents use search
for few-shot refinement, ``memrl replay --budget``, and search never imports the agents: a trained
policy's warm start is read through :mod:`memrl.envs.policy`): Optuna's samplers propose masks, the evaluation (any
:class:`memrl.evaluation.protocol.MaskEvaluator`: the real one, or a lookup table) answers, and the
run writes the same records as ``memrl train``.

* :mod:`memrl.search.config`     the run's configuration: the train config's ``env`` section + ``search``
* :mod:`memrl.search.optimizers` optimizer name -> seeded Optuna sampler (``tpe``, ``nsga2``, ``random``, ``exhaustive``)
* :mod:`memrl.search.spread`     a warm start's ranked proposals reordered to differ in ``warm_start_spread`` blocks
* :mod:`memrl.search.run`        the loop: ask -> decode -> evaluate -> tell, records, resume
* :mod:`memrl.search.cli`        the ``memrl search`` subcommand
"""
