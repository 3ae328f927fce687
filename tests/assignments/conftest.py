# The stored submissions are fragments of notebooks (they use the notebook's names, such as `np`
# and `laplace_release`), graded by tests/test_assignments.py; they are not modules to import.
collect_ignore_glob = ["submissions/*"]
