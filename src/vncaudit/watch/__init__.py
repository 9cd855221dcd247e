"""Monitors: scheduled scans of the same targets, compared cycle to cycle, with alerts.

Owns nothing itself; the parts are `schedule` (periods and cron), `config` (monitors and
channels, ``monitors.toml``), `alerts` (the rules), `digest` (one message for a burst of
alerts), `channels` (webhook, e-mail, stdout), `records` (the monitors' tables in the store),
`outbox` (the delivery worker), `cycle` (one scan, compared and evaluated), `runner` (the
schedule loop and start-up recovery) and `prune` (retention). Must not be imported by the
scanning core: it sits on top of engine and store.
"""

from vncaudit.watch.alerts import Alert
from vncaudit.watch.config import ConfigError, Monitor, WatchConfig, load
from vncaudit.watch.cycle import CycleOutcome
from vncaudit.watch.prune import PruneReport, prune
from vncaudit.watch.runner import Event, RunnerBusyError, Watcher
from vncaudit.watch.schedule import Schedule, ScheduleError, parse_duration

__all__ = ["Alert", "ConfigError", "CycleOutcome", "Event", "Monitor", "PruneReport",
           "RunnerBusyError", "Schedule", "ScheduleError", "WatchConfig", "Watcher", "load",
           "parse_duration", "prune"]
