"""``dcwatch demo``: a simulated fleet, real agents and the analyzer, to see dcwatch work on a
machine without GPUs (:mod:`.scenario` makes the data, :mod:`.runner` runs the processes)."""
