"""Orchestration: the policies above the Python API (`compile --auto`, sweeps) over one job runner.

    jobs.py      Job, CompileUnit, Gate, JobRunner: compile -> fidelity gate -> measure -> record
    auto.py      the --auto policy: the candidate grid, stage 2, the confirm stage, the Pareto front
    sweep.py     the sweep policy: the YAML file, job expansion, resume
    schedule.py  the sweep's scheduler: compile worker processes, one measuring thread per device
    ui.py        terminal progress
"""
