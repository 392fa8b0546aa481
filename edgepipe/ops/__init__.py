"""Service plumbing shared by capture and monitor: config files, watchdog, metrics, status line, options."""
