"""The middle floor: reading what studies recorded and turning it into answers: MLflow runs read back (`runs`),
tables and figures (`tables`, `figures`), the report (`report`), which kept generator of each trial it shows
(`checkpoints`), proxy-vs-target agreement (`correlate`), the halving rank check (`rankcheck`), cost from ledgers
(`ledger`), scoring checkpoints and baselines (`evaluate`), the recipe table (`recipe`) and the MLflow UI server
(`ui`). Imports `core` and `trainer`; never the search, so whatever the search logs at a stage's end is built here
and handed up.
"""
