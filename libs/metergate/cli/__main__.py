"""`python -m metergate.cli ...` runs the metergate command."""

from metergate.cli.main import main

main()
