"""The test suites; a package so that `tests.support` imports by its full name everywhere."""
