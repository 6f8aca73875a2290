"""The Python-backend model file (model.py) that repository.py copies into a Triton model
repository. Only tritonserver's Python stub imports model.py (it needs
triton_python_backend_utils); nothing else should."""
