"""Helpers shared by the tests: tiny data made on the fly, CLI child processes, MLflow stores."""
