"""The plumbing the step scripts share, one module per concern; nothing here imports a step script or the model
(utils.py)."""
