"""Development tooling that a hub does not install: the dev broker, the hostile test PKI, the
demo and its viewer. Nothing under ``edge/`` imports from here."""
