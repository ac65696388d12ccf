"""`ra experiment`: a paired matrix of training runs at matched time.

plan (pure), calibrate, calibration_run, results, jobs, local (the launcher for one host),
orchestrate (run_experiment), sequential (pure), judge, text, report, view: one job each,
described in docs/experiment.md.
"""
