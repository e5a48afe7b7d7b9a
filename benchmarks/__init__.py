"""The benchmarks, a package grouped by the question each script answers: ``curves`` (does a
method learn, and against which peers: the learning-curve race), ``speed`` (what a step, the
monitors, the input pipeline and a long run cost) and ``gpu`` (the first GPU run, a shell script).
``common`` holds what more than one script needs. Run a script as a module from the repository
root, so that ``benchmarks`` is importable::

    python -m benchmarks.speed.throughput
    python -m benchmarks.curves.learning_curve --phase all --budget-min 30

Answers, with the command and commit behind each: ``benchmarks/RESULTS.md``.
"""
