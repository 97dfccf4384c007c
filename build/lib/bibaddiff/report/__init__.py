"""Summary tables and figures, one module per stage: :mod:`~bibaddiff.report.amplification` (rule summarize:
trigger amplification and the detectors' calibration), :mod:`~bibaddiff.report.defenses` (castle walls),
:mod:`~bibaddiff.report.replication` (replication and duplicate poisoning) and :mod:`~bibaddiff.report.quality`
(generation quality), each drawing with :mod:`~bibaddiff.report.figures`. A module's ``write_*`` function is what
its summary rule's adapter calls. Nothing is imported here, so that one stage's report does not load another's
dependencies (the castle walls' bootstrap imports torch).

The report reads settings from the files and arguments it is given, never from a file's name: what a result is
(attack, set, seed, guidance) comes from the plan (:mod:`bibaddiff.plan`) through the rules' params.
"""
