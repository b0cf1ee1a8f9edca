"""Orchestration: the policies above the Python API (`compile --auto`, sweeps) over one job runner.

    jobs.py      Job, CompileUnit, Gate, JobRunner: compile -> fidelity gate -> measure -> record
    auto.py      the --auto policy: the candidate grid, stage 2, the confirm stage, the Pareto front
    boards.py    what to build for a board: backends it has, TVM for its CPU (from its snapshot)
    sweep.py     the sweep policy: the YAML file, devices as boards and pools (kinds), job expansion, resume
    schedule.py  the sweep's scheduler on one host: compile worker processes, one measuring thread per board
    lab.py       the sweep on Ray: compile tasks, boards as custom resources, retries on another board
    ui.py        terminal progress
"""
