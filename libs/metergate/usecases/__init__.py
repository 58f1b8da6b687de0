"""Use cases: what an operator asks of metergate, whatever asks it (the CLI, the demo, an API).

Each module is one area (`credits`); a use case is a function that takes its adapters (a database
engine) and the clock as arguments, applies the rules of `metergate.domain` and writes through
`metergate.db` in one transaction. Entry points (`metergate.cli`, `metergate.demo`) parse and print
and call these; nothing here parses arguments, prints, or imports an entry point.
"""
