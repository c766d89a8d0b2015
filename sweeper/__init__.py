"""sweeper: the paper's alternating hyperparameter search as resumable Optuna studies logged to MLflow."""
