"""sweeper: the paper's alternating hyperparameter search as resumable Optuna studies logged to MLflow.

Layers, each importing only those below it (tests/test_layers.py checks it):

    cli/       the `sweeper` command line (thin)
    search/    running studies: the trial state machine, executors, MLflow writing, promote, plan
    analysis/  reading results back: runs, statistics, tables, figures, report, correlate, rank check
    core/      what a study is: study files, options, selection, identity, workspace, halving
    trainer    (a separate package) the SR training library, which knows nothing of sweeps
"""
