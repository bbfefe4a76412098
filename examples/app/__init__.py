"""The tokenlane example web app: end users, admins, the admin scheduler and reports.

Start it from the repository root with ``python -m uvicorn examples.app.main:app`` (or ``scripts/run``).
"""
