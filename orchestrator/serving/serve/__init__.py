"""``cmpnas serve``: an exported query model and an embedded gallery behind HTTP, as a Ray Serve application.

``options.py`` holds what a user chooses (``ServeOptions``), ``app.py`` the deployment and its routes,
``runner.py`` the start (checks first, then Ray and Serve), the wait and the stop.
"""
