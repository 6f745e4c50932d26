"""The experiment pipeline: one module per stage (fetch, prepare, classifier, train, evaluate,
report), each a ``main(argv)`` around pure functions.  Snakefile and dvc.yaml call them."""
