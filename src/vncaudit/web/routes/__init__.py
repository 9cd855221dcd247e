"""Routers of the web app: `api` (JSON scans API), `pages` (HTML), `health` (health, metrics).

Owns nothing but the grouping; each module documents its own routes.
"""
