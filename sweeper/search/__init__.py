"""The working floor: running studies. A run's context and checks (`session`), a stage from start to winner
(`stage`), the trial state machine (`machine`, asking `record`, `leases`, `faults`, `watchdog` and `live`),
`sweeper run` (`run`) and `sweeper train` (`train_one`), the executors that start jobs (`executors/`: local
processes, SLURM), one trial's process (`worker`), GPU slot booking (`gpus`), live progress (`progress`), MLflow
writing (`tracking`), status/logs/cancel (`status`), promotion to the target architecture (`promote`), cost before
running (`plan`) and data preparation (`prepare`). Imports `analysis`, `core` and `trainer`.
"""
