"""Does a method learn on CIFAR-10, and how does it compare with its peers at equal wall-clock?
The learning-curve harness (``learning_curve`` with ``curve_methods``, ``curve_report``,
``lightly_baselines``, ``lejepa_baselines``; ``fair_race.sh`` runs the race) and the checks
beside it (``online_vs_target``, ``collapse_cjepa``)."""
