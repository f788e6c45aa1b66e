"""Training DRCN: the options of a run (``config``), its data (``data``: images -> patch bank), the objective and
schedules (``objective``), the start of a run (``setup``), the loop (``loop``: ``train(cfg, reporter)``), what it
reports (``report``) and its checkpoints (``checkpoint``). May import :mod:`drcn_cli.bench` and every floor below
it; never the CLI.
"""
