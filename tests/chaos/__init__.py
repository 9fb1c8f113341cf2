"""Chaos tests: the runner's promises under kills, duplicate storms and outages.

Nothing acknowledged is lost, nothing is done twice, and the runner keeps serving,
however its processes die and however its senders and APIs misbehave.
"""
