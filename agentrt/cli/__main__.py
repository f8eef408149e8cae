"""``python -m agentrt.cli``: the `agentrt` command, for launching it with a given interpreter."""

from agentrt.cli import main

main()
