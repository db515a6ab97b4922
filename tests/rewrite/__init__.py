# A package, so these test modules' names (test_softmax, ...) cannot collide with other suites'.
