"""The top floor: the `sweeper` command line (`app.py`, a Typer app). Each command parses nothing of its own beyond
Typer's options, imports the module that owns the work lazily (so `--help` stays fast) and turns a
`trainer.errors.UserError` into one line. May import every layer below; nothing imports it."""
