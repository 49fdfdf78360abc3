"""Hydra config groups. Installed as the package ``posttrain.conf`` (setup.py maps this folder), so
Hydra finds them as ``pkg://posttrain.conf`` in a wheel and in an editable install alike."""
