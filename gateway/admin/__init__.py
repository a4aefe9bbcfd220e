"""What an operator drives: the admin CLI (``flask gateway …``) and the health endpoints.

The top of the layers, beside the app factory: these may import every stage; no stage imports them.
"""
