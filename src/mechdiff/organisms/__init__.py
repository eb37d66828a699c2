"""Model organisms with known objectives and null controls, built locally on the toy language,
and the benchmark that scores the audit on them (``mechdiff bench``)."""
