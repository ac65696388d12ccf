"""`ra experiment`: a paired matrix of training runs at matched time.

One module per job: `plan` (arms, seeds, order, devices, step budgets, the
experiment key; pure), `calibrate` (the speed ratios, timed with torch),
`runner` (orchestration: calibration, runs in this process or in child
processes, resume, signals), `judge` (the verdict over the experiment's runs),
`sequential` (the group-sequential design of --until-settled; pure), `report`
(Markdown and PNGs) and `view` (the live progress view).
"""
