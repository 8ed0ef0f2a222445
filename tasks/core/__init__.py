"""The leaf layer every other layer may import: errors, settings, shared types, process groups, MLflow errors.

Imports nothing of gpuflow but ``workloads`` (checked by tests/unit/test_import_contract.py).
"""
