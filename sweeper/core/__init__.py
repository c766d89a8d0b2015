"""The ground floor: what a study *is*, with no knowledge of how it is run or shown.

Owns the study files (`studies`), the command line's `key=value` options (`overrides`), the selection metrics and
their order (`selection`), a trial's identity (`identity`), the rules of successive halving (`halving`), the
workspace and its Optuna record (`workspace`, `trials`), the names of the MLflow layout (`mlflow_names`) and the
named crash points (`crashpoints`). Imports only `trainer` and other `core` modules.
"""
