"""The web dashboard (issue 15): server-rendered pages on the API's port; see app.py."""
