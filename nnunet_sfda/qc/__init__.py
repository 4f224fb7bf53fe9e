"""Label-free per-case quality control of an adapted target (``nnunet-sfda report``).

:mod:`.case_checks` (pure numpy: measures, flags, the recommendation rule), :mod:`.predict` (inputs and the two
models run in-process), :mod:`.write` (the report folder), :mod:`.report_file` (``sfda_report.json``),
:mod:`.report` (the command). See docs/report.md.
"""
