"""Where the work runs: the Backend protocol, the local backend, the remote client and the wire
format it shares with ``histoseg serve``."""
