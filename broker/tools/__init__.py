"""Every `nightjar` command that is not the running service: demo, bench, replay, simulate,
Tails training, model fetch and conversion, and the native service supervisor.

The service (`nightjar run`, `nightjar post`) never imports this package; a unit test holds
it to that (tests/unit/test_layout.py).
"""
