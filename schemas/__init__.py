"""The Avro schemas of every topic's records (`*.avsc`; older writer versions in `history/`).

Installed as the package data of `metergate.schemas`, so the codec finds them in a wheel and in
the source checkout through one lookup (`importlib.resources`).
"""
