"""metergate services: one sub-package per running process, each a thin shell around metergate."""
