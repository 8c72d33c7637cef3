"""Experiments beyond the gate, each measuring something the suite's regression check cannot:

- upgrade: the upgrade check (both versions of a library side by side, in fresh process pairs)
- environments: environment B of an upgrade check (an overlay of other package versions)
- compare: stored results against stored results
- noise: the noise report over repeated runs
- sensitivity: the noise experiment on one configuration (A/A trials, injected slowdowns)
"""
