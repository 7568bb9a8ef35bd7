"""The analyzer app's keys, in a module of their own so that the page modules can read the app's
resources without importing :mod:`.app` (which imports them)."""

from __future__ import annotations

from aiohttp import web

from dcwatch.detectors.alerting.sender import AlertSender
from dcwatch.detectors.capacity.planner import CapacityPlanner
from dcwatch.detectors.models.fitting import FitBackend
from dcwatch.detectors.service import Analyzer
from dcwatch.detectors.sources.base import Source

SOURCE: web.AppKey[Source] = web.AppKey("source")
SENDER = web.AppKey("sender", AlertSender)
BACKEND = web.AppKey("backend", FitBackend)
ANALYZER = web.AppKey("analyzer", Analyzer)
STARTED = web.AppKey("started", float)
PLANNER = web.AppKey("planner", CapacityPlanner)
# Set by ``dcwatch demo``: every page says plainly that it shows a simulated fleet.
DEMO = web.AppKey("demo", str)
